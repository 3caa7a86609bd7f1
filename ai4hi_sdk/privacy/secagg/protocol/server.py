"""Server side of SecAgg+ as a pure state machine: relay keys and shares, sum, check, unmask.

One :class:`SecAggRound` per training round, driven in this order::

    collect_adverts -> collect_shares -> collect_inputs -> consistency_request
        -> collect_consistency -> finish -> decode

Each ``collect_*`` takes the messages that arrived (a mapping site -> message, or an iterable of
``(site, message)`` pairs: a site that sent twice in one step is rejected for that step; a site
that sent nothing is simply absent), rejects malformed, replayed, misrouted or inconsistent ones
with a logged reason (:attr:`SecAggRound.rejections`) and moves on with the rest. The server never
holds a key that opens a share; honest sites reveal a survivor's self secret or a dropped site's
mask key, never both, so it can remove masks from the **sum** and nothing else.

:class:`RoundAbandoned` (the caller keeps its last good model) is raised

* before any share is requested, if too few sites survive for every needed secret to be rebuilt
  (``consistency_request``) or too few signed the survivor set (``collect_consistency``);
* in ``finish``, if too few answered, or a rebuilt secret does not match what its owner signed
  (self-mask secret vs the commitment in its advertisement, mask key vs its public key) and the
  bad shares cannot be left out (more than ``t`` shares are needed for that);
* in ``decode``, if the unmasked sum is impossible for in-range inputs: a mean element outside
  ``[-clip, clip]`` (plus the quantisation bound), a total weight outside
  ``[survivors, survivors x max_samples_per_site]``, a metric mean outside its clip or a metric
  count above the number of survivors. This catches a site that sends out-of-range levels
  (or a garbage sum); it does **not** stop one site from moving the mean anywhere *inside* the clip
  range or from claiming any weight up to ``max_samples_per_site``: there are no per-site range
  proofs, the server only ever sees the sum.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..primitives.commit import matches_commitment
from ..primitives.kdf import derive_pair_seed, derive_self_seed
from ..primitives.keys import public_key_of, shared_secret
from ..primitives.masking import unmask_aggregate
from ..primitives.shamir import ShamirError, Share, recover_verified
from .client import decode_share_map, graph_seed
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, MaskedInput, ProtocolError,
                       ShareKeys, UnmaskRequest, UnmaskResponse, Verifier)
from .payload import DecodedSum, PayloadCodec

Received = Mapping[str, object] | Iterable[tuple[str, object]]


class RoundAbandoned(Exception):
    """The round cannot be unmasked safely; ``str(err)`` says why. The caller keeps its last good model."""


@dataclass
class SecAggRound:
    """Server state of one round.

    Args:
        job_id, round_index: the context every message must carry.
        config: the job's protocol configuration.
        length: number of uint32 coordinates in every masked vector.
        verify: optional certificate/signature check (sites check anyway; the server rejects bad
            advertisements and consistency signatures early so one forged message cannot make every
            site refuse the round).
        participants: optional: the job's sites; anything else is rejected at advertisement.
    """

    job_id: str
    round_index: int
    config: SecAggConfig
    length: int
    verify: Verifier | None = None
    participants: frozenset[str] | None = None
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    neighbours: dict[str, frozenset[str]] = field(default_factory=dict)
    threshold: int = 0
    shared: set[str] = field(default_factory=set)  # U2: sent shares
    inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # U3: site -> masked_with
    aggregate: np.ndarray | None = None
    proposal: ConsistencyRequest | None = None
    signatures: dict[str, bytes] = field(default_factory=dict)  # U4: site -> encoded signature
    request: UnmaskRequest | None = None
    total: np.ndarray | None = None
    survivors: list[str] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)

    def _reject(self, site: str, step: str, reason: str) -> None:
        self.rejections.append({"round": self.round_index, "site": site, "step": step, "reason": reason})

    def _messages(self, received: Received, step: str) -> list[tuple[str, object]]:
        """Sorted ``(site, message)`` pairs; a site that sent more than once in this step is rejected."""
        pairs = list(received.items()) if isinstance(received, Mapping) else list(received)
        counts = Counter(site for site, _ in pairs)
        for site in sorted(s for s, c in counts.items() if c > 1):
            self._reject(site, step, f"{counts[site]} messages from the same site in one step (duplicate)")
        return sorted(((s, m) for s, m in pairs if counts[s] == 1), key=lambda p: p[0])

    # ---------------------------------------------------------------- 1. adverts
    def collect_adverts(self, received: Received) -> list[bytes]:
        """Check the advertisements; returns the ones to relay to every site (U1)."""
        if self.adverts:
            raise RoundAbandoned(f"round {self.round_index}: advertisements were already collected")
        for site, raw in self._messages(received, "advertise"):
            try:
                if self.participants is not None and site not in self.participants:
                    raise ProtocolError(f"{site!r} is not a site of this job")
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
    def collect_shares(self, received: Received) -> dict[str, dict[str, bytes]]:
        """Route sealed shares; returns ``inbox[receiver][sender]`` for the masking step (U2)."""
        inbox: dict[str, dict[str, bytes]] = {s: {} for s in self.adverts}
        for site, raw in self._messages(received, "share"):
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
        return {r: {s: c for s, c in box.items() if s in self.shared} for r, box in inbox.items() if r in self.shared}

    # ---------------------------------------------------------------- 3. masked inputs
    def _decode_input(self, raw: object) -> MaskedInput:
        if isinstance(raw, tuple) and len(raw) == 2:  # (header, uint32 vector) as the glue ships them
            return MaskedInput.decode_parts(raw[0], raw[1], self.job_id, self.round_index, self.length)
        return MaskedInput.decode(raw, self.job_id, self.round_index, self.length)

    def collect_inputs(self, received: Received) -> None:
        """Sum the masked vectors mod 2**32 (U3). A message is an encoded :class:`MaskedInput` or a
        ``(MaskedInput.header(), vector)`` pair."""
        total = np.zeros(self.length, dtype=np.uint32)
        for site, raw in self._messages(received, "input"):
            try:
                if site not in self.shared:
                    raise ProtocolError("site sent no shares this round")
                msg = self._decode_input(raw)
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

    # ---------------------------------------------------------------- 4. consistency check
    def consistency_request(self) -> bytes:
        """The survivor/dropped sets every survivor is asked to sign, or :class:`RoundAbandoned` if
        the sum could not be unmasked even if every survivor answered (nothing is requested then)."""
        if self.aggregate is None:
            raise RoundAbandoned(f"round {self.round_index}: no inputs collected")
        survivors = sorted(self.inputs)
        dropped = sorted(self.shared - set(self.inputs))
        problems = self._recoverability(set(survivors), dropped)
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: {len(survivors)} of {len(self.adverts)} sites sent "
                                 f"masked inputs; " + "; ".join(problems))
        self.proposal = ConsistencyRequest(self.job_id, self.round_index, tuple(survivors), tuple(dropped))
        return self.proposal.encode()

    def collect_consistency(self, received: Received) -> bytes:
        """Keep the survivors' valid signatures over the proposed sets (U4); returns the
        :class:`UnmaskRequest` for U4 (:meth:`unmask_targets`), or :class:`RoundAbandoned` if fewer
        than ``t`` signed or U4 cannot rebuild every needed secret (nothing revealed yet)."""
        if self.proposal is None:
            raise RoundAbandoned(f"round {self.round_index}: no consistency request was sent")
        p = self.proposal
        for site, raw in self._messages(received, "consistency"):
            try:
                if site not in self.inputs:
                    raise ProtocolError("consistency signature from a site that is not a survivor")
                sig = ConsistencySignature.decode(raw, self.job_id, self.round_index)
                if sig.site != site:
                    raise ProtocolError(f"signature names {sig.site!r} but came from {site!r}")
                if (sig.survivors, sig.dropped) != (p.survivors, p.dropped):
                    raise ProtocolError("signed a different survivor set than the one proposed")
                if self.verify is not None and (reason := self.verify(
                        site, self.adverts[site].certificate, sig.signed_bytes(), sig.signature)):
                    raise ProtocolError(f"consistency signature rejected: {reason}")
            except ProtocolError as err:
                self._reject(site, "consistency", err.reason)
                continue
            assert isinstance(raw, (bytes, bytearray, memoryview))  # it decoded
            self.signatures[site] = bytes(raw)
        signers = set(self.signatures)
        problems = [] if len(signers) >= self.threshold else [
            f"only {len(signers)} survivors signed the survivor set, t={self.threshold}"]
        problems += self._recoverability(signers, list(p.dropped))
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: consistency check failed: " + "; ".join(problems))
        self.request = UnmaskRequest(self.job_id, self.round_index, p.survivors, p.dropped,
                                     tuple(self.signatures[s] for s in sorted(self.signatures)))
        return self.request.encode()

    def unmask_targets(self) -> list[str]:
        """The sites to send the unmask request to: the survivors that signed (U4)."""
        return sorted(self.signatures)

    def _recoverability(self, responders: set[str], dropped: list[str]) -> list[str]:
        t = self.threshold
        problems = []
        if len(self.inputs) < t:
            problems.append(f"fewer than the threshold t={t}")
        for u in sorted(self.inputs):
            self_holders = ({u} | (self.neighbours[u] & self.shared)) & responders
            if len(self_holders) < t:
                problems.append(f"self secret of {u} has {len(self_holders)} share holders left, t={t}")
        for d in dropped:
            key_holders = self.neighbours[d] & self.shared & responders
            if len(key_holders) < t:
                problems.append(f"mask key of dropped {d} has {len(key_holders)} share holders left, t={t}")
        return problems

    # ---------------------------------------------------------------- 5. unmask
    def finish(self, received: Received) -> tuple[np.ndarray, list[str]]:
        """Rebuild and check the survivors' self secrets and the dropped sites' mask keys, remove
        all masks from the sum. Returns ``(sum of the survivors' quantised vectors, survivors)``.

        A share that does not lie on the polynomial of a secret that passes its check is left out
        and its holder named in :attr:`rejections`; if no ``t`` shares pass, :class:`RoundAbandoned`.
        """
        if self.request is None or self.aggregate is None:
            raise RoundAbandoned("unmask before the consistency check")
        survivors, dropped = list(self.request.survivors), list(self.request.dropped)
        self_shares: dict[str, list[tuple[str, Share]]] = {u: [] for u in survivors}
        key_shares: dict[str, list[tuple[str, Share]]] = {d: [] for d in dropped}
        responders: set[str] = set()
        for site, raw in self._messages(received, "unmask"):
            try:
                if site not in self.signatures:
                    raise ProtocolError("unmask response from a site that was not asked (did not sign)")
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
                self_shares[u].append((site, share))
            for d, share in decoded_key.items():
                key_shares[d].append((site, share))
        problems = self._recoverability(responders, dropped)
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: too few unmask responses: " + "; ".join(problems))
        self_seeds = {}
        for u in survivors:
            ad = self.adverts[u]
            secret = self._rebuild(u, "self-mask secret", self_shares[u], lambda b, ad=ad: matches_commitment(
                b, ad.self_commitment, job_id=self.job_id, round_index=self.round_index, site=ad.site))
            self_seeds[u] = derive_self_seed(secret, self.job_id, self.round_index)
        pair_seeds: dict[str, dict[str, bytes]] = {}
        for d in dropped:
            mask_pk = self.adverts[d].mask_pk
            private = self._rebuild(d, "mask key", key_shares[d], lambda k, pk=mask_pk: _opens(k, pk))
            pair_seeds[d] = {u: derive_pair_seed(shared_secret(private, self.adverts[u].mask_pk),
                                                 job_id=self.job_id, round_index=self.round_index,
                                                 site_a=d, site_b=u)
                             for u in sorted(self.neighbours[d] & set(survivors))}
        total = self.aggregate.copy()
        unmask_aggregate(total, survivor_self_seeds=self_seeds, dropped_pair_seeds=pair_seeds,
                         cipher=self.config.cipher)
        self.total, self.survivors = total, survivors
        return total, survivors

    def _rebuild(self, owner: str, what: str, shares: list[tuple[str, Share]], accept) -> bytes:
        holders = {share.x: site for site, share in shares}
        try:
            secret, bad = recover_verified([s for _, s in shares], self.threshold, accept)
        except ShamirError as err:
            raise RoundAbandoned(f"round {self.round_index}: the {what} of {owner} cannot be rebuilt from "
                                 f"{len(shares)} shares (t={self.threshold}) so that it matches what {owner} "
                                 f"signed: {err}; nothing was unmasked") from err
        for share in bad:
            self._reject(holders[share.x], "unmask", f"corrupt share of the {what} of {owner}: left out")
        return secret

    # ---------------------------------------------------------------- 6. decode, bounded
    def decode(self, codec: PayloadCodec) -> DecodedSum:
        """Read the unmasked sum with ``codec``; :class:`RoundAbandoned` if it is impossible for
        in-range inputs (:meth:`PayloadCodec.sum_problems`, module docstring)."""
        if self.total is None:
            raise RoundAbandoned(f"round {self.round_index}: nothing was unmasked")
        n = len(self.survivors)
        try:
            decoded = codec.decode(self.total, n)
        except ValueError as err:
            raise RoundAbandoned(f"round {self.round_index}: unmasked sum rejected: {err}") from err
        problems = codec.sum_problems(decoded, n)
        if problems:
            raise RoundAbandoned(f"round {self.round_index}: unmasked sum rejected (out of the public bounds: a "
                                 "site sent out-of-range values or the sum is corrupt): " + "; ".join(problems))
        return decoded


def _opens(private: bytes, public: bytes) -> bool:
    try:
        return len(private) == 32 and public_key_of(private) == public
    except ValueError:
        return False
