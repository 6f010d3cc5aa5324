"""The structure search of the projective model: its state, continuous phase and death moves.

:class:`ProjectiveSearch` is the projective model's side of the engine's search
(:func:`metagen_ppl.engine.structure.search_structure`): birth proposals
(:class:`~metagen_ppl.models.projective.births.BirthProposals`), death proposals,
their gains of the penalised score (log likelihood + count, category and
location priors + the Laplace Occam factors of :mod:`.occam`), and the continuous
phase: the engine's EM loop (:func:`~metagen_ppl.engine.em.run_em`) with the
model's batched E-step, its closed-form M-step, the field of view (ECME) and the
Gauss-Newton location M-step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from metagen_ppl.engine.checkpoint import hash_tensors
from metagen_ppl.engine.em import EMSteps, run_em
from metagen_ppl.engine.enumeration import EnumeratedModel, EStep
from metagen_ppl.engine.mstep import optimizer_mstep
from metagen_ppl.engine.structure import Moves, StructureSearch
from metagen_ppl.errors import DataError
from metagen_ppl.models.detector.estep import detection_posterior
from metagen_ppl.models.projective.births import BirthProposals
from metagen_ppl.models.projective.estep import frame_terms, joint_log_terms, video_log_likelihood
from metagen_ppl.models.projective.generative import (DEFAULTS, V_SITES, box_bounds, camera_of, clamp_to_box,
                                                      log_prior, model, num_categories_of, prior_params)
from metagen_ppl.models.projective.mstep import (camera_axes, index_views, closed_form_mstep,
                                                 gauss_newton_locations)
from metagen_ppl.models.projective.noise import pixel_noise_of
from metagen_ppl.models.projective.occam import location_hessian, log_occam, structure_penalty

#: The modes of a fit: V learned, V given, V at its prior (the lesioned model), objects given (the truth).
MODES = ("learn", "fixed", "lesioned", "truth")


class _Steps(EMSteps):
    """The hooks of the projective EM phase (the state lives in the search)."""

    def __init__(self, search: "ProjectiveSearch", move_locations: bool):
        self.search, self.move_locations = search, move_locations

    def estep(self, values):
        return self.search.em_estep(values)

    def mstep(self, values, est, iteration):
        self.search.values = values
        self.search.em_mstep(est.marginals["z"], iteration, self.move_locations)
        return self.search.values, False


def _same_state(a, b) -> bool:
    """Whether two :meth:`ProjectiveSearch.estep` keys name the same tensors at the same versions."""
    (va, ca, cva, aa, ava, *ra), (vb, cb, cvb, ab, avb, *rb) = a, b
    return (ca is cb and cva == cvb and aa is ab and ava == avb and all(x is y for x, y in zip(ra, rb))
            and len(va) == len(vb)
            and all(na == nb and ta is tb and xa == xb for (na, ta, xa), (nb, tb, xb) in zip(va, vb)))


class ProjectiveSearch(BirthProposals, StructureSearch):
    """The projective model on many videos: the state of the structure search and its moves.

    State: ``values`` (``locs`` (V, K, 3), the detector's parameters ``rates``, ``hallucination``,
    ``pixel_scale``, ``mark_real``, ``mark_hall`` and ``half_fov``; ``learned`` says which the M-step
    updates), ``cats`` (V, K), ``active`` (V, K), ``birth_locs`` (where each slot's object was
    proposed), ``history``, ``n_iter``. The camera and ``C`` are the data's (``num_categories``
    overrides ``C``); ``half_fov`` starts at the camera's nominal value, ``fov_range`` (degrees)
    defaults to its nominal field of view +- 10, and a camera with ``learn_fov`` False is not refined.
    """

    kind = "projective"

    def __init__(self, data, *, mode="learn", params=None, truth=None, max_objects=8, tol=1e-7, max_iter=200,
                 gn_iters=6, half_fov=None, learn_fov=True, fov_range=None,
                 location_step="gauss-newton", num_categories=None, **options):
        if mode not in MODES:
            raise DataError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if location_step not in ("gauss-newton", "lbfgs"):
            raise DataError(f"unknown location_step {location_step!r}; choose 'gauss-newton' or 'lbfgs'")
        self.location_step = location_step
        self.data = data
        self.dtype = data["centers"].dtype
        self.V = data["cams"].shape[0]
        self.C = num_categories_of(data) if num_categories is None else int(num_categories)
        camera = camera_of(data)
        self.options = {k: v for k, v in options.items() if k in DEFAULTS}
        self.noise = pixel_noise_of(options)
        self.mode = mode
        self.tol, self.max_iter, self.gn_iters = tol, max_iter, gn_iters
        self.lo, self.hi, self.log_vol = box_bounds(data)
        prior = prior_params(self.C, self.dtype, **self.options)
        self.values = dict(prior)
        self.values["half_fov"] = torch.tensor(camera.half_fov if half_fov is None else float(half_fov),
                                               dtype=self.dtype)
        if mode == "fixed" and params is not None and params.get("half_fov") is not None and half_fov is None:
            self.values["half_fov"] = torch.as_tensor(params["half_fov"], dtype=self.dtype).reshape(())
        self.learn_fov = bool(learn_fov) and mode != "fixed" and camera.learn_fov
        self._fov_searched = False
        self._fov_moved = 0.0
        if fov_range is None:      # the nominal field of view +- 10 degrees (45-65 for the shared data)
            fov_range = (max(1.0, camera.fov_deg - 10.0), min(179.0, camera.fov_deg + 10.0))
        self.fov_range = tuple(math.radians(x / 2) for x in fov_range)
        if mode == "learn":
            self.learned = set(V_SITES)
        elif mode == "lesioned":
            self.learned = {"pixel_scale"}
        elif mode == "fixed":
            if params is None:
                raise DataError("mode 'fixed' needs the parameters (V, pixel_scale, marks) to use")
            self.values.update({k: torch.as_tensor(params[k], dtype=self.dtype) for k in V_SITES})
            self.learned = set()
        else:
            self.learned = set(V_SITES)
        if params is not None and mode == "learn":
            self.values.update({k: torch.as_tensor(params[k], dtype=self.dtype) for k in V_SITES if k in params})
        if mode == "truth":
            if truth is None:
                raise DataError("mode 'truth' needs the true objects (cats, positions, mask)")
            cats, pos, mask = truth
            self.K = max(1, cats.shape[1])
            self.cats = torch.zeros(self.V, self.K, dtype=torch.long)
            self.active = torch.zeros(self.V, self.K, dtype=torch.bool)
            locs = ((self.lo + self.hi) / 2).expand(self.V, self.K, 3).clone()
            if cats.shape[1]:
                self.cats[:, :cats.shape[1]] = cats
                self.active[:, :cats.shape[1]] = mask
                locs[:, :cats.shape[1]] = pos.to(self.dtype)
            self.values["locs"] = locs
        else:
            self.K = int(max_objects)
            self.cats = torch.zeros(self.V, self.K, dtype=torch.long)
            self.active = torch.zeros(self.V, self.K, dtype=torch.bool)
            self.values["locs"] = ((self.lo + self.hi) / 2).expand(self.V, self.K, 3).clone()
        f, right, up = camera_axes(data)
        self.axes = (f, right, up)
        self._build_groups()
        self.num_scenes, self.max_objects = self.V, self.K
        self.history, self.n_iter, self.round = [], 0, 0
        self.birth_locs = self.values["locs"].clone()      # where each slot's object was proposed
        self._start_hash = hash_tensors({"values": self.values, "cats": self.cats, "active": self.active})[:16]

    # ----------------------------------------------------------------- compact object batches
    def _compact_batch(self, resp):
        """Active objects with only the detections of their (video, category) group:
        ``u`` (N, M, 1, 2), ``g`` (N, M, 1), one camera per detection, the video's frames
        for the exposure. Same objective as :func:`object_batch`, far smaller tensors."""
        if float(self.grp["views"]["half"]) != float(self.values["half_fov"]):
            self._build_groups()
        grp = self.grp
        vk = self.active.nonzero()
        v, k = vk[:, 0], vk[:, 1]
        gi = v * self.C + self.cats[v, k]
        t, d = grp["t"][gi], grp["d"][gi]
        g = resp[v[:, None], t, d, (k + 1)[:, None]] * grp["mask"][gi].to(self.dtype)      # (N,M)
        return v, k, dict(u=grp["u"][gi].unsqueeze(2), g=g.unsqueeze(-1), views=index_views(grp["views"], gi),
                          expo_views=index_views(grp["frame_views"], v),
                          expo_mask=self.data["frame_mask"][v], rate=self.values["rates"][self.cats[v, k]],
                          sigma=self.values["pixel_scale"].reshape(()), noise=self.noise)

    def _location_mstep(self, resp):
        if self.location_step == "lbfgs":
            return self._engine_location_mstep()
        v, k, kw = self._compact_batch(resp)
        mu, _ = gauss_newton_locations(self.values["locs"][v, k], lo=self.lo, hi=self.hi, iters=self.gn_iters, **kw)
        locs = self.values["locs"].clone()
        locs[v, k] = mu
        self.values["locs"] = locs

    def _engine_location_mstep(self, steps=30):
        """The generic M-step of the engine: LBFGS on the engine's Q of :func:`model` (traced with
        Pyro's enumeration, all videos in one call) over the ``locs`` site, the other sites fixed."""

        opts = dict(self.options, cats=self.cats, active=self.active, num_categories=self.C, pixel_noise=self.noise,
                    half_fov=self.values["half_fov"],
                    **{k: self.values[k] for k in V_SITES})
        em = EnumeratedModel(model, self.data, self.K, opts)
        est = em.estep({"locs": self.values["locs"]})
        new = optimizer_mstep(em, {"locs": self.values["locs"]}, est, ["locs"], steps=steps)
        self.values["locs"] = clamp_to_box(new["locs"], self.lo, self.hi)

    def _occam(self, resp):
        # memoised (as estep): the search asks again for the same state and responsibilities (record, deaths)
        key = self._state_key()
        memo = getattr(self, "_occam_memo", None)
        if memo is not None and memo[1] is resp and self._unchanged(memo[0], memo[3], key):
            return memo[2]
        out = torch.zeros(self.active.shape, dtype=self.dtype)
        if bool(self.active.any()):
            v, k, kw = self._compact_batch(resp)
            mu = self.values["locs"][v, k]
            out[v, k] = log_occam(location_hessian(mu, **kw), mu, self.lo, self.hi)
        self._occam_memo = (key, resp, out, [(resp, resp._version), (out, out._version)])
        return out

    # ----------------------------------------------------------------- E-step and scores
    def estep(self):
        """The batched E-step at the current state: ``(joint, lse, resp, loglik, vis)``.

        Memoised (a performance detail): the search asks for the E-step of an unchanged state several
        times per round (after a move's record, at the start of the EM phase, for the deaths); the
        state is the same when every tensor of ``values``, ``cats`` and ``active`` is the same object
        at the same version (no in-place change) and the last result was not changed in place."""
        memo = self._estep_memo_now()
        if memo is not None:
            return memo[1]
        key = self._state_key()
        extras = {}
        joint, lam, vis = joint_log_terms(self.data, self.values, self.cats, self.active, self.C, self.noise,
                                          extras=extras)
        lse, resp = detection_posterior(joint, self.data["det_mask"])
        loglik = lse.sum((-1, -2)) + frame_terms(self.data, lam)
        out = (joint, lse, resp, loglik, vis)
        self._estep_memo = (key, out, [(t, t._version) for t in out + (extras["pixels"], extras["sq"])], extras)
        return out

    def _state_key(self):
        return (tuple((n, t, getattr(t, "_version", None)) for n, t in self.values.items()),
                self.cats, self.cats._version, self.active, self.active._version, self.data, self.C, self.noise)

    def _unchanged(self, key, versions, now=None) -> bool:
        """Whether a memo made at state ``key`` still holds: the state is the same (``now``, default the
        current :meth:`_state_key`) and no tensor of ``versions`` (``[(tensor, version)]``) changed in place."""
        now = self._state_key() if now is None else now
        return _same_state(key, now) and all(t._version == v for t, v in versions)

    def _estep_memo_now(self):
        """The memoised E-step ``(key, out, versions, extras)`` when it is the current state's, else None."""
        memo = getattr(self, "_estep_memo", None)
        return memo if memo is not None and self._unchanged(memo[0], memo[2]) else None

    def scores(self, resp, loglik):
        occ = self._occam(resp)
        pen = structure_penalty(self.active.sum(-1), occ.sum(-1), self.log_vol, self.C,
                                self.options.get("count_prior_p"))
        return loglik + pen, occ

    def log_joint(self, loglik):
        return float(loglik.sum() + log_prior(self.values, self.learned, self.active, self.data, **self.options))

    def record(self, phase, loglik=None, resp=None):
        if loglik is None:
            _, _, resp, loglik, _ = self.estep()
        score, _ = self.scores(resp, loglik)
        self.history.append({"iteration": self.n_iter, "round": self.round, "phase": phase,
                           "log_likelihood": float(loglik.sum()), "log_joint": self.log_joint(loglik),
                           "score": float(score.sum()), "num_objects": int(self.active.sum()),
                           "pixel_scale": float(self.values["pixel_scale"])})

    # ----------------------------------------------------------------- EM phase (fixed structure)
    def fit_parameters(self) -> bool:
        return self.em_phase(move_locations=self.mode != "truth")   # the true objects stay where they are

    def em_phase(self, move_locations=True) -> bool:
        """The engine's EM loop (:func:`~metagen_ppl.engine.em.run_em`) with the structure fixed: closed-form
        M-step of the learned parameters, the field of view every third iteration, the locations."""
        self._fov_moved = max(self._fov_moved, math.radians(0.02))   # at least one FOV step per phase

        def each(it, values, est):
            self.n_iter += 1

        run = run_em(_Steps(self, move_locations), self.values, tol=self.tol, max_iter=self.max_iter,
                     on_iteration=each)
        self.values = run.values
        self.record("em", run.estep.details["video_log_likelihood"], run.estep.marginals["z"])
        return run.converged

    def em_estep(self, values) -> EStep:
        """The E-step of the EM phase at ``values`` (which become the current state)."""
        self.values = values
        joint, lse, resp, loglik, vis = self.estep()
        lj = self.log_joint(loglik)
        return EStep(log_joint=lj, log_likelihood=float(loglik.sum()), log_prior=lj - float(loglik.sum()),
                     marginals={"z": resp}, weights={}, details={"video_log_likelihood": loglik})

    def em_mstep(self, resp, iteration, move_locations) -> None:
        """One M-step on the current state: the closed forms of the learned parameters, the field of view
        (ECM: every third iteration; a global search first, then Newton steps), the locations."""
        # the E-step's pixels and residuals when resp is the current state's E-step (the same numbers)
        memo = self._estep_memo_now()
        pixels = None
        if (memo is not None and memo[1][2] is resp and self.values.get("half_fov") is not None
                and self.values["locs"].dtype == self.data["centers"].dtype):
            pixels = (memo[3]["pixels"], memo[1][4], memo[3]["sq"])
        upd = closed_form_mstep(self.data, {"z": resp}, self.values, self.K, cats=self.cats, active=self.active,
                                num_categories=self.C, pixel_noise=self.noise, pixels=pixels, **self.options,
                                **{k: self.values[k] for k in V_SITES if k not in self.learned})
        self.values.update({k: v for k, v in upd.items() if k in self.learned})
        if self.learn_fov and bool(self.active.any()) and (iteration - 1) % 3 == 0:
            if self._fov_searched:
                if self._fov_moved > math.radians(0.005):
                    self.fov_mstep(resp, move_locations, local=True)
            else:
                self.fov_mstep(resp, move_locations)
                self._fov_searched = True
        if move_locations and bool(self.active.any()):
            self._location_mstep(resp)

    def fov_profile(self, h, move_locations=True, resp=None, batch=None):
        """The log likelihood of every video (summed) at half field of view ``h`` (radians), with the
        objects re-placed by Gauss-Newton on Q at that ``h`` (kept where they are when
        ``move_locations`` is False): ``(value, locations of the active objects (N, 3))``. ``resp``
        defaults to the current E-step's."""
        if batch is None:
            if resp is None:
                _, _, resp, _, _ = self.estep()
            batch = self._compact_batch(resp)
        v, k, kw = batch
        mu0 = self.values["locs"][v, k]
        half = torch.as_tensor(h, dtype=self.dtype)
        args = dict(kw, views=dict(kw["views"], half=half))
        if kw.get("expo_views") is not None:
            args["expo_views"] = dict(kw["expo_views"], half=half)
        mu = mu0
        if move_locations:
            mu, _ = gauss_newton_locations(mu0, lo=self.lo, hi=self.hi, iters=4, **args)
        locs = self.values["locs"].clone()
        locs[v, k] = mu
        ll, _ = video_log_likelihood(self.data, dict(self.values, locs=locs, half_fov=half), self.cats,
                                     self.active, self.C, self.noise, responsibilities=False)
        return float(ll.sum()), mu

    def fov_mstep(self, resp, move_locations=True, evals=12, local=False):
        """Conditional maximisation of the log marginal likelihood over the field of view
        (ECME): for each candidate value the locations are re-fitted by Gauss-Newton on Q
        (fixed when ``move_locations`` is False) and the exact log likelihood is evaluated
        (direct E-step). Golden-section search over ``fov_range`` (``local=False``) or one
        parabolic (Newton) step through three nearby values (``local=True``); kept only if
        the likelihood rises, so the EM objective never decreases. (Q itself is a poor
        criterion here: a global change of the projection moves some object across an
        image border in a frame where it holds responsibility, which Q punishes with
        IMPOSSIBLE although the likelihood barely changes.)"""
        v, k, kw = self._compact_batch(resp)

        def profile(h):
            return self.fov_profile(h, move_locations, resp, (v, k, kw))

        cur_h = float(self.values["half_fov"])
        cur_val, cur_mu = profile(cur_h)
        a, b = self.fov_range
        if local:
            d = math.radians(0.1)
            fm, fp = profile(cur_h - d)[0], profile(cur_h + d)[0]
            curv = fp + fm - 2 * cur_val
            if curv < 0:
                step = -0.5 * d * (fp - fm) / curv
            else:
                step = d if fp > fm else -d
            step = max(-math.radians(1.0), min(math.radians(1.0), step))
            h = min(b, max(a, cur_h + step))
        else:
            gr = (math.sqrt(5) - 1) / 2
            x1, x2 = b - gr * (b - a), a + gr * (b - a)
            f1, f2 = profile(x1)[0], profile(x2)[0]
            for _ in range(evals):
                if f1 >= f2:
                    b, x2, f2 = x2, x1, f1
                    x1 = b - gr * (b - a)
                    f1 = profile(x1)[0]
                else:
                    a, x1, f1 = x1, x2, f2
                    x2 = a + gr * (b - a)
                    f2 = profile(x2)[0]
            h = x1 if f1 >= f2 else x2
        val, mu = profile(h)
        if val <= cur_val:
            h, val, mu = cur_h, cur_val, cur_mu
        self._fov_moved = abs(h - cur_h)
        self.values["half_fov"] = torch.tensor(h, dtype=self.dtype)
        if move_locations:
            locs = self.values["locs"].clone()
            locs[v, k] = mu
            self.values["locs"] = locs

    # ----------------------------------------------------------------- deaths
    def propose_deaths(self) -> Optional[Moves]:
        """Removing each object (proposal ``v K + k``), with the change of its video's penalised score."""
        if not bool(self.active.any()):
            return None
        joint, lse, resp, loglik, vis = self.estep()
        V, K = self.active.shape
        mask = self.data["det_mask"]
        zero = torch.zeros((), dtype=self.dtype)
        occ = self._occam(resp)                                                    # (V,K)
        drop = torch.eye(K + 1, dtype=torch.bool)[1:]                               # (K,J)
        # the log likelihood without object k, for the active (v, k) only (the others' gains are -inf)
        kk, vv = self.active.T.nonzero(as_tuple=True)                               # (P,) k-major
        jk = torch.where(drop[kk][:, None, None, :], torch.full((), -math.inf, dtype=self.dtype),
                         joint[vv])                                                 # (P,T,D,J)
        lse_k = torch.where(mask[vv], jk.logsumexp(-1), zero)
        expo = (vis & self.active[:, None, :]).to(self.dtype).sum(1) * self.values["rates"][self.cats]   # (V,K)
        dll = torch.zeros(V, K, dtype=self.dtype)
        dll[vv, kk] = (lse_k - lse[vv]).sum((-1, -2))
        dll = dll + expo                                                            # (V,K)
        per_obj = self._per_object_prior() + occ
        gain = torch.where(self.active, dll - per_obj, torch.full((), -math.inf, dtype=self.dtype))
        return Moves(scene=torch.arange(V).repeat_interleave(K), gain=gain.reshape(-1),
                     payload={"slot": torch.arange(K).repeat(V)})

    # ----------------------------------------------------------------- the engine's protocol
    def propose(self, kind: str) -> Optional[Moves]:
        return self.propose_births() if kind == "birth" else self.propose_deaths()

    def apply(self, kind: str, moves: Moves, chosen: torch.Tensor) -> None:
        if kind == "birth":
            self.apply_births(moves, chosen)
        else:
            self.active[moves.scene[chosen], moves.payload["slot"][chosen]] = False

    # ----------------------------------------------------------------- checkpoints
    def data_fingerprint(self) -> str:
        return hash_tensors(self.data)

    def settings(self) -> dict:
        """What a checkpoint of this fit is valid for: the settings and the starting state
        (``max_rounds`` is not part of it: it may be raised on resume)."""
        return {"mode": self.mode, "max_objects": self.K, "tol": self.tol, "max_iter": self.max_iter,
                "gn_iters": self.gn_iters, "learn_fov": self.learn_fov, "fov_range": list(self.fov_range),
                "location_step": self.location_step, "num_categories": self.C, "options": dict(self.options),
                "pixel_noise": repr(self.noise),
                "learned": sorted(self.learned), "dtype": str(self.dtype).replace("torch.", ""),
                "start (params, truth, half_fov)": self._start_hash}

    def state_dict(self) -> dict:
        """Everything that changes during the search (the rest follows from data and settings)."""
        return {"values": dict(self.values), "cats": self.cats, "active": self.active, "history": self.history,
                "n_iter": self.n_iter, "birth_locs": self.birth_locs, "fov_searched": self._fov_searched,
                "fov_moved": self._fov_moved}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (bit-identical tensors)."""
        self.values = {k: v.to(self.dtype) for k, v in state["values"].items()}
        self.cats, self.active = state["cats"].to(torch.long), state["active"].to(torch.bool)
        self.history = list(state["history"])
        self.n_iter = int(state["n_iter"])
        self.birth_locs = state["birth_locs"].to(self.dtype)
        self._fov_searched, self._fov_moved = bool(state["fov_searched"]), float(state["fov_moved"])
        self._build_groups()

    def final(self) -> dict:
        """Final E-step: ``loglik`` (V,), ``score`` (V,), ``resp``, ``occam`` (V, K)."""
        _, _, resp, loglik, _ = self.estep()
        score, occ = self.scores(resp, loglik)
        return {"loglik": loglik, "score": score, "resp": resp, "occam": occ}

    def existence_probabilities(self) -> torch.Tensor:
        """Posterior probability that each object exists, ``(V, K)`` (0 for inactive slots).

        The log posterior odds of object ``k`` of video ``v`` existing against its video
        without it, everything else fixed, are the difference of the two penalised scores
        (Laplace approximation of the marginal likelihood over the object's location):

            log pi / (1 - pi) = [log p(x_v | with k) - log p(x_v | without k)]
                                + log(1 - p) + log(1/C) - log vol + log Z_k

        i.e. minus the gain of removing it (:meth:`propose_deaths`); the MAP structure keeps an
        object only if this is positive, so a kept object has ``pi > 1/2``.
        """
        out = torch.zeros(self.active.shape, dtype=self.dtype)
        moves = self.propose_deaths()
        if moves is None:
            return out
        gain = moves.gain.reshape(self.active.shape)
        return torch.where(self.active, torch.sigmoid(-gain), out)

    def objects(self) -> list:
        """Per video: ``[(category index, [x, y, z]), ...]`` of the active slots."""
        out = []
        locs = self.values["locs"]
        for v in range(self.V):
            ks = self.active[v].nonzero().reshape(-1).tolist()
            out.append([(int(self.cats[v, k]), [float(x) for x in locs[v, k]]) for k in ks])
        return out
