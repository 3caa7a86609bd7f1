"""Server side of SecAgg+ as a pure state machine: relay keys and shares, sum, unmask.

One :class:`SecAggRound` per training round. The server never holds a key that opens a share; it
learns a site's self secret only when that site survived (its vector is in the sum) and a site's
mask key only when it dropped (its vector is not) -- so it can remove masks from the **sum** and
nothing else. Each step takes the messages that arrived (site -> bytes; a site that sent nothing
simply is not in the mapping), rejects malformed, replayed or inconsistent ones with a logged
reason (:attr:`SecAggRound.rejections`), and moves on with the rest.

If too few sites survive for every needed secret to be reconstructable (``t`` shares), the round
is abandoned **before** any unmask request goes out (:class:`RoundAbandoned`): no share of
anything is revealed and the caller keeps its last good model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..primitives.kdf import derive_pair_seed, derive_self_seed
from ..primitives.keys import shared_secret
from ..primitives.masking import unmask_aggregate
from ..primitives.shamir import ShamirError, combine
from .client import decode_share_map, graph_seed
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import AdvertiseKeys, MaskedInput, ProtocolError, ShareKeys, UnmaskRequest, UnmaskResponse, Verifier


class RoundAbandoned(Exception):
    """The round cannot be unmasked; ``str(err)`` says why. Nothing individual was revealed."""


@dataclass
class SecAggRound:
    """Server state of one round.

    Args:
        job_id, round_index: the context every message must carry.
        config: the job's protocol configuration.
        length: number of uint32 coordinates in every masked vector.
        verify: optional certificate/signature check (sites check anyway; the server rejects
            bad advertisements early so one forged key cannot make every site refuse the round).
    """

    job_id: str
    round_index: int
    config: SecAggConfig
    length: int
    verify: Verifier | None = None
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    neighbours: dict[str, frozenset[str]] = field(default_factory=dict)
    threshold: int = 0
    shared: set[str] = field(default_factory=set)  # U2: sent shares
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # U3: site -> masked_with
    aggregate: np.ndarray | None = None
    request: UnmaskRequest | None = None
    rejections: list[dict] = field(default_factory=list)

    def _reject(self, site: str, step: str, reason: str) -> None:
        self.rejections.append({"round": self.round_index, "site": site, "step": step, "reason": reason})

    # ---------------------------------------------------------------- 1. adverts
    def collect_adverts(self, received: dict[str, bytes]) -> list[bytes]:
        """Check the advertisements; returns the ones to relay to every site (U1)."""
        for site, raw in sorted(received.items()):
            try:
                ad = AdvertiseKeys.decode(raw, self.job_id, self.round_index)
                if ad.site != site:
                    raise ProtocolError(f"advertisement names {ad.site!r} but came from {site!r}")
                if self.verify is not None and (reason := ad.check_signature(self.verify)):
                    raise ProtocolError(f"advertisement rejected: {reason}")
            except ProtocolError as err:
                self._reject(site, "advertise", err.reason)
                continue
            self.adverts[site] = ad
        n = len(self.adverts)
        try:
            self.config.validate_for(n)
            self.threshold = self.config.effective_threshold(n)
            self.neighbours = neighbour_graph(sorted(self.adverts), self.config.degree(n),
                                              graph_seed(self.job_id, self.round_index))
        except ValueError as err:
            raise RoundAbandoned(f"round {self.round_index}: {n} sites advertised keys: {err}") from err
        return [self.adverts[s].encode() for s in sorted(self.adverts)]

    # ---------------------------------------------------------------- 2. shares
    def collect_shares(self, received: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
        """Route sealed shares; returns ``inbox[receiver][sender]`` for the masking step (U2)."""
        inbox: dict[str, dict[str, bytes]] = {s: {} for s in self.adverts}
        for site, raw in sorted(received.items()):
            try:
                if site not in self.adverts:
                    raise ProtocolError("site did not advertise keys this round")
                msg = ShareKeys.decode(raw, self.job_id, self.round_index)
                if msg.site != site:
                    raise ProtocolError(f"shares name {msg.site!r} but came from {site!r}")
                if set(msg.sealed) != set(self.neighbours[site]):
                    raise ProtocolError("shares are not addressed to exactly the site's neighbours")
            except ProtocolError as err:
                self._reject(site, "share", err.reason)
                continue
            self.shared.add(site)
            for receiver, sealed in msg.sealed.items():
                inbox[receiver][site] = sealed
        # a site only masks with neighbours whose shares it got: deliver only U2's shares to U2
        return {r: box for r, box in inbox.items() if r in self.shared}

    # ---------------------------------------------------------------- 3. masked inputs
    def collect_inputs(self, received: dict[str, bytes]) -> None:
        """Sum the masked vectors mod 2**32 (U3)."""
        total = np.zeros(self.length, dtype=np.uint32)
        for site, raw in sorted(received.items()):
            try:
                if site not in self.shared:
                    raise ProtocolError("site sent no shares this round")
                msg = MaskedInput.decode(raw, self.job_id, self.round_index, self.length)
                if msg.site != site:
                    raise ProtocolError(f"input names {msg.site!r} but came from {site!r}")
                expected = tuple(sorted(self.neighbours[site] & self.shared))
                if tuple(sorted(msg.masked_with)) != expected:
                    raise ProtocolError(f"masked with {sorted(msg.masked_with)}, expected {list(expected)}")
            except ProtocolError as err:
                self._reject(site, "input", err.reason)
                continue
            np.add(total, msg.vector, out=total)
            self.inputs[site] = msg.masked_with
        self.aggregate = total

    def unmask_request(self) -> bytes:
        """The request every survivor gets, or :class:`RoundAbandoned` if the sum cannot be
        unmasked (then nothing is requested, so nothing is revealed)."""
        survivors = sorted(self.inputs)
        dropped = sorted(self.shared - set(self.inputs))
        problems = self._recoverability(set(survivors), dropped)
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: {len(survivors)} of {len(self.adverts)} sites sent "
                                 f"masked inputs; " + "; ".join(problems))
        self.request = UnmaskRequest(self.job_id, self.round_index, tuple(survivors), tuple(dropped))
        return self.request.encode()

    def _recoverability(self, responders: set[str], dropped: list[str]) -> list[str]:
        t = self.threshold
        problems = []
        if len(self.inputs) < t:
            problems.append(f"fewer than the threshold t={t}")
        for u in sorted(self.inputs):
            holders = ({u} | (self.neighbours[u] & self.shared)) & responders
            if len(holders) < t:
                problems.append(f"self secret of {u} has {len(holders)} share holders left, t={t}")
        for d in dropped:
            holders = self.neighbours[d] & self.shared & responders
            if len(holders) < t:
                problems.append(f"mask key of dropped {d} has {len(holders)} share holders left, t={t}")
        return problems

    # ---------------------------------------------------------------- 4. unmask
    def finish(self, received: dict[str, bytes]) -> tuple[np.ndarray, list[str]]:
        """Reconstruct the survivors' self seeds and the dropped sites' pair seeds, remove all
        masks from the sum. Returns ``(sum of the survivors' quantised vectors, survivors)``."""
        if self.request is None or self.aggregate is None:
            raise RoundAbandoned("unmask before the request was sent")
        survivors, dropped = list(self.request.survivors), list(self.request.dropped)
        self_shares: dict[str, list] = {u: [] for u in survivors}
        key_shares: dict[str, list] = {d: [] for d in dropped}
        responders: set[str] = set()
        for site, raw in sorted(received.items()):
            try:
                if site not in self.inputs:
                    raise ProtocolError("unmask response from a site that is not a survivor")
                msg = UnmaskResponse.decode(raw, self.job_id, self.round_index)
                allowed_self = ({site} | (self.neighbours[site] & self.shared)) & set(survivors)
                allowed_key = self.neighbours[site] & self.shared & set(dropped)
                if msg.site != site or set(msg.self_shares) != allowed_self or set(msg.key_shares) != allowed_key:
                    raise ProtocolError("response does not carry exactly the requested shares")
                decoded_self, decoded_key = decode_share_map(msg.self_shares), decode_share_map(msg.key_shares)
            except ProtocolError as err:
                self._reject(site, "unmask", err.reason)
                continue
            responders.add(site)
            for u, share in decoded_self.items():
                self_shares[u].append(share)
            for d, share in decoded_key.items():
                key_shares[d].append(share)
        problems = self._recoverability(responders, dropped)
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: too few unmask responses: " + "; ".join(problems))
        try:
            self_seeds = {u: derive_self_seed(combine(self_shares[u], self.threshold), self.job_id, self.round_index)
                          for u in survivors}
            pair_seeds: dict[str, dict[str, bytes]] = {}
            for d in dropped:
                private = combine(key_shares[d], self.threshold)
                pair_seeds[d] = {u: derive_pair_seed(shared_secret(private, self.adverts[u].mask_pk),
                                                     job_id=self.job_id, round_index=self.round_index,
                                                     site_a=d, site_b=u)
                                 for u in sorted(self.neighbours[d] & set(survivors))}
        except (ShamirError, ValueError) as err:
            raise RoundAbandoned(f"round {self.round_index}: reconstruction failed: {err}") from err
        total = self.aggregate.copy()
        unmask_aggregate(total, survivor_self_seeds=self_seeds, dropped_pair_seeds=pair_seeds,
                         cipher=self.config.cipher)
        return total, survivors
