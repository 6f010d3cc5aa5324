"""Birth proposals of the projective structure search: candidate objects from unexplained detections.

Candidates come from the detections the current objects leave to hallucination:
pairs of same-category detections in two frames of a video are triangulated
(RANSAC-style, :meth:`BirthProposals._candidates`), single detections propose a
point on their viewing ray at mid height; every candidate is refined by local EM
and scored by the gain of its video's penalised score. A mixin of
:class:`~metagen_ppl.models.projective.structure.ProjectiveSearch`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from metagen_ppl.domain.camera import triangulate
from metagen_ppl.engine.structure import Moves
from metagen_ppl.models.projective.generative import (DEFAULTS, camera_of, clamp_to_box, half_fov_of, pixel_to_ray,
                                                      ray_at_mid_height, squared_residuals)
from metagen_ppl.models.projective.mstep import (index_views, inside_image, project_views, views_of,
                                                 gauss_newton_locations)
from metagen_ppl.models.projective.occam import location_hessian, log_occam


class BirthProposals:
    """Birth moves of :class:`~metagen_ppl.models.projective.structure.ProjectiveSearch`."""

    def _build_groups(self):
        """Static compact layout of the detections per (video, category) group, ``(G, M)``
        with ``G = V C`` and ``M`` the largest group, sorted by frame."""
        data = self.data
        V, T, D = data["centers"].shape[:3]
        C = self.C
        v, t, d = data["det_mask"].nonzero(as_tuple=True)
        c = data["categories"][v, t, d]
        key = v * C + c
        order = torch.argsort(key * (T * D) + t * D + d)
        v, t, d, c, key = v[order], t[order], d[order], c[order], key[order]
        G = V * C
        counts = torch.bincount(key, minlength=G)
        M = max(1, int(counts.max())) if len(key) else 1
        pos = torch.arange(len(key)) - (torch.cumsum(counts, 0) - counts)[key]
        gt = torch.zeros(G, M, dtype=torch.long)
        gd = torch.zeros(G, M, dtype=torch.long)
        gm = torch.zeros(G, M, dtype=torch.bool)
        gt[key, pos], gd[key, pos], gm[key, pos] = t, d, True
        gv = torch.arange(G) // C
        f, right, up = self.axes
        camera = camera_of(data)
        half = half_fov_of(self.values, camera)
        rays = pixel_to_ray(data["centers"], data["cams"][:, :, None], data["looks"][:, :, None], half, camera)
        vv = gv[:, None].expand(G, M)
        self.grp = {"v": gv, "c": torch.arange(G) % C, "t": gt, "d": gd, "mask": gm,
                    "u": data["centers"][vv, gt, gd], "bin": data["score_bins"][vv, gt, gd],
                    "views": dict(views_of(data["cams"][vv, gt], f[vv, gt], right[vv, gt], up[vv, gt], half, camera),
                                  frames=gt),     # the frame of the video each view is (see location_objective)
                    "frame_views": views_of(data["cams"], f, right, up, half, camera),       # (V,T)
                    "rays": rays[vv, gt, gd]}

    def _group_projection(self, mu, gi):
        """Pixels ``(P, M, 2)`` and depth ``(P, M)`` of points ``mu`` (P, 3) in the views of groups ``gi``
        (:func:`project_views` of ``index_views(grp["views"], gi)``), projected in the T frames of their
        video and taken at each view's frame (the same numbers: a view is its frame's camera)."""
        grp = self.grp
        pix, depth, _ = project_views(mu, index_views(grp["frame_views"], grp["v"][gi]))   # (P,T,2)
        link = (torch.arange(len(gi))[:, None], grp["t"][gi])
        return pix[link], depth[link]

    def _candidates(self, resp, kappa=3.0, rounds=4):
        """Candidate objects from the detections the current objects leave to hallucination.

        RANSAC-style over pairs: every pair of such detections of one category in
        two frames of a video is triangulated; a pair is kept if the point lies in
        front of both cameras and reprojects within ``kappa sigma_px`` of both
        detections; its inliers are the group's unexplained detections within
        ``kappa sigma_px`` of its projection. Per (video, category), the pair with
        the most inliers is taken, the pairs that use one of its inliers are
        dropped, and so on (``rounds`` times). Unexplained detections that no
        chosen pair covers propose an object on their viewing ray at mid height.

        Returns ``(group index (P,), location (P, 3))`` or ``None``.
        """
        grp = self.grp
        G, M = grp["t"].shape
        sigma = float(self.values["pixel_scale"])
        free = self.active.logical_not().any(-1)
        gv = grp["v"]
        gt, gd = grp["t"], grp["d"]
        un = grp["mask"] & (resp[gv[:, None], gt, gd, 0] > 0.5) & free[gv][:, None]        # (G,M)
        pair = un[:, :, None] & un[:, None, :] & (gt[:, :, None] < gt[:, None, :])
        gi, i, j = pair.nonzero(as_tuple=True)
        views = grp["views"]
        covered = torch.zeros(G, M, dtype=torch.bool)
        cand_g, cand_mu = [], []
        if len(gi):
            o = torch.stack([views["cams"][gi, i], views["cams"][gi, j]], 1)
            d = torch.stack([grp["rays"][gi, i], grp["rays"][gi, j]], 1)
            p, cond = triangulate(o, d, return_condition=True)
            ok = torch.isfinite(p).all(-1) & (cond > 1e-6)
            gi, i, j, p = gi[ok], i[ok], j[ok], p[ok]
            p = clamp_to_box(p, self.lo, self.hi)
            pix, depth = self._group_projection(p, gi)                                  # (P,M,2)
            err = (pix - grp["u"][gi]).norm(dim=-1)
            inl = un[gi] & inside_image(pix, depth, views["camera"]) & (err < kappa * sigma)  # (P,M)
            ar = torch.arange(len(gi))
            keep = inl[ar, i] & inl[ar, j]
            gi, i, j, p, inl, err = gi[keep], i[keep], j[keep], p[keep], inl[keep], err[keep]
            if len(gi):
                n_inl = inl.sum(-1).to(self.dtype)
                mean_err = torch.where(inl, err, torch.zeros((), dtype=self.dtype)).sum(-1) / n_inl
                score = n_inl - mean_err / (kappa * sigma + 1.0)                          # ties: smaller error
                alive = torch.ones(len(gi), dtype=torch.bool)
                for _ in range(rounds):
                    s = torch.where(alive, score, torch.full((), -math.inf, dtype=self.dtype))
                    best = torch.full((G,), -math.inf, dtype=self.dtype).scatter_reduce(0, gi, s, "amax")
                    is_best = alive & (s == best[gi])
                    # one pick per group (the first of ties)
                    idx = is_best.nonzero().reshape(-1)
                    if len(idx) == 0:
                        break
                    first = torch.ones(len(idx), dtype=torch.bool)
                    first[1:] = gi[idx][1:] != gi[idx][:-1]
                    pick = idx[first]
                    cand_g.append(gi[pick])
                    cand_mu.append(p[pick])
                    covered[gi[pick]] |= inl[pick]
                    alive &= ~(covered[gi, i] | covered[gi, j])
                    alive[pick] = False
        sg, si = (un & ~covered).nonzero(as_tuple=True)
        if len(sg):
            t = gt[sg, si]
            v = gv[sg]
            cand_g.append(sg)
            camera = camera_of(self.data)
            cand_mu.append(ray_at_mid_height(grp["u"][sg, si], self.data["cams"][v, t], self.data["looks"][v, t],
                                          self.lo, self.hi, half_fov_of(self.values, camera), camera))
        if not cand_g:
            return None
        return torch.cat(cand_g), torch.cat(cand_mu)

    def _candidate_terms(self, gp, mu):
        """Per candidate: its log intensity on each detection of its group ``(P, M, 1)``
        (``-inf`` where it cannot explain the detection)."""
        grp = self.grp
        c = grp["c"][gp]
        pix, depth = self._group_projection(mu, gp)                                     # (P,M,2)
        gauss = self.noise.log_density(squared_residuals(grp["u"][gp], pix), self.values["pixel_scale"])
        lr = torch.log(self.values["mark_real"])[c[:, None], grp["bin"][gp]]
        ok = grp["mask"][gp] & inside_image(pix, depth, grp["views"]["camera"])
        term = torch.where(ok, torch.log(self.values["rates"])[c][:, None] + gauss + lr,
                           torch.full((), -math.inf, dtype=self.dtype))
        return term.unsqueeze(-1)

    def propose_births(self) -> Optional[Moves]:
        """Candidate objects (:meth:`_candidates`), each refined by three local EM steps and scored by the
        gain of its video's penalised score (log likelihood, count, category and location priors,
        Laplace Occam factor)."""
        if not bool((~self.active).any()):
            return None
        if float(self.grp["views"]["half"]) != float(self.values["half_fov"]):
            self._build_groups()
        _, lse, resp, loglik, _ = self.estep()
        cand = self._candidates(resp)
        if cand is None:
            return None
        gp, mu = cand
        grp = self.grp
        data = self.data
        vp, cp = grp["v"][gp], grp["c"][gp]
        lse_g = lse[grp["v"][:, None], grp["t"], grp["d"]][gp].unsqueeze(-1)            # (P,M,1)
        mask_g = grp["mask"][gp].unsqueeze(-1)
        rate = self.values["rates"][cp]
        kw = dict(u=grp["u"][gp].unsqueeze(2), views=index_views(grp["views"], gp), rate=rate,
                  sigma=self.values["pixel_scale"],
                  expo_views=index_views(grp["frame_views"], vp),
                  expo_mask=data["frame_mask"][vp], noise=self.noise)
        zero = torch.zeros((), dtype=self.dtype)
        for _ in range(3):                                                       # local EM on each candidate
            term = self._candidate_terms(gp, mu)
            g = torch.where(mask_g, (term - torch.logaddexp(lse_g, term)).exp(), zero)
            mu, _ = gauss_newton_locations(mu, g=g, lo=self.lo, hi=self.hi, iters=3, **kw)
        term = self._candidate_terms(gp, mu)
        new = torch.logaddexp(lse_g, term)
        g = torch.where(mask_g, (term - new).exp(), zero)
        epix, edepth, _ = project_views(mu, kw["expo_views"])
        evis = inside_image(epix, edepth, kw["expo_views"]["camera"]) & kw["expo_mask"]
        dll = torch.where(mask_g, new - lse_g, zero).sum((-1, -2)) - rate * evis.to(self.dtype).sum(-1)
        H = location_hessian(mu, g=g, **kw)
        gain = dll + self._per_object_prior() + log_occam(H, mu, self.lo, self.hi)
        return Moves(scene=vp, gain=gain, payload={"category": cp, "location": mu})

    def apply_births(self, moves: Moves, chosen: torch.Tensor) -> None:
        bv = moves.scene[chosen]
        slot = (~self.active[bv]).to(torch.int8).argmax(-1)
        self.cats[bv, slot] = moves.payload["category"][chosen]
        self.active[bv, slot] = True
        locs = self.values["locs"].clone()
        locs[bv, slot] = moves.payload["location"][chosen]
        self.values["locs"] = locs
        self.birth_locs[bv, slot] = moves.payload["location"][chosen]

    def _per_object_prior(self) -> float:
        """``log(1 - p) + log(1/C) + log(1/vol)``: count, category and location prior of one more object."""
        p = float(DEFAULTS["count_prior_p"] if self.options.get("count_prior_p") is None
                  else self.options["count_prior_p"])
        return math.log1p(-p) - math.log(self.C) - self.log_vol
