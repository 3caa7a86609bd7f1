"""Site side of SecAgg+ against an active server (Bonawitz et al. 2017; Bell et al. 2020), pure.

Per round ``r`` a site runs five steps; every message is bound to ``(job_id, r)``:

1. :meth:`SecAggClient.advertise` -- fresh X25519 key pairs ``c`` (share encryption) and ``s``
   (mask seeds) and a fresh self-mask secret ``b``; signs ``c``, ``s`` and a commitment to ``b``
   with the site's provisioned key.
2. :meth:`SecAggClient.share_keys` -- accepts the relayed advertisements only from **sites of this
   job**: each must come from the job's participant set (given by the site runtime, never by the
   server), carry a site certificate of the consortium (no server, admin or CA certificate; see
   :mod:`.identity`) naming it, and a valid signature; our own must come back unchanged. Any
   refused advertisement refuses the round (an honest server relays only valid ones). Then checks
   the cohort and threshold against the site's :class:`~.policy.SitePolicy`, Shamir-splits ``b``
   and the private half of ``s`` (``t`` of ``|U1|``, x = 1 + position in sorted ``U1``) and seals one
   pair of shares per neighbour (AES-GCM under an ECDH key over ``c``).
   :meth:`SecAggClient.participants` then names the verified cohort (for the log, and for the
   client-level DP noise share: :func:`ai4hi_sdk.privacy.dp.client_level.noise_share_std`).
3. :meth:`SecAggClient.mask` -- opens the shares that reached us (``U2`` = their senders), refuses
   if fewer than ``t`` of our neighbourhood are left, adds ``PRG(b)`` and ``+-PRG(s_uv)``.
4. :meth:`SecAggClient.consistency` -- the ConsistencyCheck round: checks the survivor set ``U3``
   (and dropped set) the server proposes and signs exactly that pair, once per round; a second,
   different pair for the same round is refused and ends the round for this site.
5. :meth:`SecAggClient.unmask` -- only after signing, and only if the request carries at least
   ``t`` valid signatures from distinct accepted participants that are survivors, all over the
   very pair we signed (else the server told sites different things: abort with the reason), and
   the optional ``reveal_check`` (e.g. the client-level DP noise left by dropouts) passes. Then
   reveals, per neighbour, the share of ``b`` (survivor) **or** of ``s`` (dropped) -- never both for
   one peer in one round (:meth:`revealed` keeps the record, and every round is answered once) --
   and forgets every secret of the round.

Any :class:`ProtocolError` in steps 4-5 also forgets the round's secrets (fail closed), so no later
request can get anything out of it; a round number is never used twice. Keys are fresh every
round, so revealing a dropped site's ``s`` in one round exposes nothing of any other round.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ..primitives.commit import commit_self_secret
from ..primitives.encoding import decode_message, decode_share, encode_message, encode_share
from ..primitives.kdf import derive_pair_seed, derive_self_seed
from ..primitives.keys import KeyPair, generate_keypair, shared_secret
from ..primitives.masking import apply_pairwise_masks
from ..primitives.shamir import Share, split
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import (AdvertiseKeys, ConsistencyRequest, ConsistencySignature, MaskedInput, ProtocolError,
                       ShareKeys, Signer, UnmaskRequest, UnmaskResponse, Verifier, open_share, seal_share)
from .policy import SitePolicy

#: ``(participants, survivors) -> None if the site may reveal its shares, else the reason``
RevealCheck = Callable[[tuple[str, ...], tuple[str, ...]], "str | None"]


def graph_seed(job_id: str, round_index: int) -> bytes:
    """Seed of the round's neighbour graph (public: server and sites compute the same graph)."""
    return f"ai4hi-secagg-graph\x00{job_id}\x00{round_index}".encode()


def share_index(participants: list[str] | tuple[str, ...], site: str) -> int:
    """Shamir x-coordinate of ``site``'s shares: 1 + its position among the sorted participants."""
    return sorted(participants).index(site) + 1


@dataclass(frozen=True)
class RoundRecord:
    """What a site did in one round (names only, nothing secret): for the site's log and ledger.

    Attributes:
        participants: the verified cohort ``U1`` (this site included), sorted.
        neighbours: this site's neighbours in the masking graph.
        threshold: ``t``.
        masked_with: neighbours whose shares we held and masked with (``U2``), sorted.
        survivors, dropped: the pair we signed in the consistency round (empty before).
        signers: the participants whose consistency signatures we verified.
        revealed_self, revealed_key: peers whose self-mask share / mask-key share we revealed.
    """

    round: int
    participants: tuple[str, ...]
    neighbours: tuple[str, ...]
    threshold: int
    masked_with: tuple[str, ...] = ()
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    signers: tuple[str, ...] = ()
    revealed_self: tuple[str, ...] = ()
    revealed_key: tuple[str, ...] = ()


@dataclass
class _RoundState:
    cipher: KeyPair
    mask: KeyPair
    self_secret: bytes
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    neighbours: frozenset[str] = frozenset()
    threshold: int = 0
    own_shares: tuple[bytes, bytes] = (b"", b"")  # (b share, s share) held for ourselves
    held: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # sender -> its shares for us
    masked: bool = False
    signed: ConsistencySignature | None = None


class SecAggClient:
    """One site's protocol state for one job.

    Args:
        site: this site's name (as in its certificate).
        job_id: the job; every message and key derivation is bound to it.
        config: the job's :class:`SecAggConfig` (requested threshold, graph, clip, cipher).
        sign: signs bytes with the site's provisioned key.
        certificate: the site's certificate (PEM), sent with its advertisement.
        verify: checks another site's certificate and signature (see :data:`Verifier`; use
            :class:`~.identity.CertificateVerifier` with the kit's ``server_names``).
        participants: the job's sites as the site runtime knows them (this site included); keys
            from anyone else are refused.
        policy: the site's own :class:`~.policy.SitePolicy` (minimum cohort, threshold floor).
        reveal_check: optional last check before any share is revealed, called with the verified
            participants and the verified survivors (e.g. :func:`~ai4hi_sdk.privacy.dp.client_level.noise_shortfall`);
            a returned reason aborts the round for this site with nothing revealed.

    ``rejections`` lists every refused advertisement or request as ``{"round", "site", "step",
    "reason"}`` (the site's log); :meth:`participants` and :meth:`record` name what was accepted.
    """

    def __init__(self, site: str, job_id: str, config: SecAggConfig, *, sign: Signer, certificate: bytes,
                 verify: Verifier, participants: Iterable[str], policy: SitePolicy | None = None,
                 reveal_check: RevealCheck | None = None):
        self.site, self.job_id, self.config = site, job_id, config
        self._sign, self._certificate, self._verify = sign, certificate, verify
        allowed = [participants] if isinstance(participants, str) else list(participants)
        if isinstance(participants, str) or not all(isinstance(p, str) and p for p in allowed):
            raise ValueError("participants must be the names of the job's sites")
        self.allowed = frozenset(allowed)
        if site not in self.allowed:
            raise ValueError(f"this site {site!r} is not among the job's participants {sorted(self.allowed)}")
        self.policy = policy or SitePolicy()
        self.reveal_check = reveal_check
        self.rejections: list[dict] = []
        self._rounds: dict[int, _RoundState] = {}
        self._used: set[int] = set()
        self._records: dict[int, RoundRecord] = {}
        self._revealed: dict[int, dict[str, str]] = {}  # round -> peer -> "self" | "key" (kept after forget)

    # ---------------------------------------------------------------- helpers
    def _state(self, round_index: int, step: str) -> _RoundState:
        state = self._rounds.get(round_index)
        if state is None:
            raise ProtocolError(f"{step}: no live key advertisement of ours for round {round_index}")
        return state

    def _refuse(self, round_index: int, step: str, reason: str, site: str = "") -> ProtocolError:
        self.rejections.append({"round": round_index, "site": site or self.site, "step": step, "reason": reason})
        return ProtocolError(reason)

    def _abort(self, round_index: int, step: str, reason: str) -> ProtocolError:
        """Record ``reason`` and forget the round's secrets: nothing of it can be revealed later."""
        self.forget(round_index)
        return self._refuse(round_index, step, f"round {round_index} aborted: {reason}")

    def participants(self, round_index: int) -> tuple[str, ...]:
        """The verified cohort ``U1`` of a round (sorted, this site included), after :meth:`share_keys`."""
        record = self._records.get(round_index)
        if record is None:
            raise ProtocolError(f"no verified participants for round {round_index} (share_keys not done)")
        return record.participants

    def record(self, round_index: int) -> RoundRecord:
        """What this site accepted, signed and revealed in a round (see :class:`RoundRecord`)."""
        if round_index not in self._records:
            raise ProtocolError(f"nothing recorded for round {round_index}")
        return self._records[round_index]

    def revealed(self, round_index: int) -> dict[str, str]:
        """Peer -> ``"self"`` or ``"key"``: which share of each peer this site revealed in a round."""
        return dict(self._revealed.get(round_index, {}))

    def _update_record(self, round_index: int, **changes) -> None:
        self._records[round_index] = RoundRecord(**{**self._records[round_index].__dict__, **changes})

    # ---------------------------------------------------------------- 1. advertise
    def advertise(self, round_index: int) -> bytes:
        """Fresh keys and self-mask secret for ``round_index``; returns the signed :class:`AdvertiseKeys`."""
        if round_index in self._used:
            raise ProtocolError(f"round {round_index} was already used by this site (replay?)")
        self._used.add(round_index)
        state = _RoundState(cipher=generate_keypair(), mask=generate_keypair(), self_secret=secrets.token_bytes(32))
        self._rounds[round_index] = state
        commitment = commit_self_secret(state.self_secret, job_id=self.job_id, round_index=round_index, site=self.site)
        msg = AdvertiseKeys(self.job_id, round_index, self.site, state.cipher.public, state.mask.public, commitment,
                            self._certificate)
        return AdvertiseKeys(**{**msg.__dict__, "signature": self._sign(msg.signed_bytes())}).encode()

    # ---------------------------------------------------------------- 2. share keys
    def _accept_adverts(self, round_index: int, adverts: list[bytes]) -> dict[str, AdvertiseKeys]:
        verified: dict[str, AdvertiseKeys] = {}
        refused: list[str] = []
        for raw in adverts:
            try:
                ad = AdvertiseKeys.decode(raw, self.job_id, round_index)
            except ProtocolError as err:
                refused.append(err.reason)
                self._refuse(round_index, "share_keys", err.reason, "?")
                continue
            if ad.site in verified:
                reason = f"two advertisements for {ad.site!r}"
            elif ad.site not in self.allowed:
                reason = f"advertisement of {ad.site!r} rejected: not a site of this job ({sorted(self.allowed)})"
            else:
                check = ad.check_signature(self._verify)
                reason = f"advertisement of {ad.site!r} rejected: {check}" if check else ""
            if reason:
                refused.append(reason)
                self._refuse(round_index, "share_keys", reason, ad.site)
                continue
            verified[ad.site] = ad
        if refused:
            raise ProtocolError("refusing the round: " + "; ".join(refused))
        return verified

    def share_keys(self, round_index: int, adverts: list[bytes]) -> bytes:
        """Verify the relayed advertisements and seal our shares for each neighbour.

        Raises :class:`ProtocolError` (a refusal: nothing is sent) for any advertisement that is
        not from a site of this job with a valid site certificate and signature, for our own key
        missing or altered, for a cohort below ``policy.min_sites`` and for a threshold below the
        site's floor.
        """
        state = self._state(round_index, "share_keys")
        if state.adverts:
            raise ProtocolError(f"shares for round {round_index} were already sent")
        verified = self._accept_adverts(round_index, adverts)
        mine = verified.get(self.site)
        own = (state.cipher.public, state.mask.public, commit_self_secret(
            state.self_secret, job_id=self.job_id, round_index=round_index, site=self.site))
        if mine is None or (mine.cipher_pk, mine.mask_pk, mine.self_commitment) != own:
            raise self._refuse(round_index, "share_keys", "our own advertisement is missing or was altered")
        participants = sorted(verified)
        n = len(participants)
        try:
            degree = self.config.degree(n)
            t = self.config.effective_threshold(n)
            refusal = self.policy.refusal(n, degree + 1, t)
            if refusal is None:
                self.config.validate_for(n)
                neighbours = neighbour_graph(participants, degree, graph_seed(self.job_id, round_index))
        except ValueError as err:
            refusal = f"cannot run secure aggregation with {n} sites: {err}"
        if refusal:
            raise self._refuse(round_index, "share_keys", refusal)
        state.adverts, state.neighbours, state.threshold = verified, neighbours[self.site], t
        self._records[round_index] = RoundRecord(round_index, tuple(participants), tuple(sorted(state.neighbours)), t)
        b_shares = split(state.self_secret, t, n)
        s_shares = split(state.mask.private_bytes, t, n)
        sealed: dict[str, bytes] = {}
        for v in sorted(state.neighbours):
            x = share_index(participants, v) - 1
            plain = encode_message("SharePair", {"self": encode_share(b_shares[x]), "key": encode_share(s_shares[x])})
            secret = shared_secret(state.cipher.private, verified[v].cipher_pk)
            sealed[v] = seal_share(plain, secret, job_id=self.job_id, round_index=round_index,
                                   sender=self.site, receiver=v)
        me = share_index(participants, self.site) - 1
        state.own_shares = (encode_share(b_shares[me]), encode_share(s_shares[me]))
        return ShareKeys(self.job_id, round_index, self.site, sealed).encode()

    # ---------------------------------------------------------------- 3. masked input
    def mask(self, round_index: int, inbox: dict[str, bytes], vector: np.ndarray) -> bytes:
        """Open the shares in ``inbox`` (sender -> sealed), then mask ``vector`` (uint32, in place)."""
        state = self._state(round_index, "mask")
        if not state.adverts:
            raise ProtocolError(f"mask: no shares were sent for round {round_index}")
        if state.masked:
            raise ProtocolError(f"a masked input for round {round_index} was already produced")
        unknown = set(inbox) - state.neighbours
        if unknown:
            raise self._refuse(round_index, "mask", f"shares from non-neighbours {sorted(unknown)}")
        held: dict[str, tuple[bytes, bytes]] = {}
        for sender, sealed in inbox.items():
            secret = shared_secret(state.cipher.private, state.adverts[sender].cipher_pk)
            plain = open_share(sealed, secret, job_id=self.job_id, round_index=round_index,
                               sender=sender, receiver=self.site)
            _, pair = decode_message(plain, kind="SharePair", schema={"self": bytes, "key": bytes})
            held[sender] = (pair["self"], pair["key"])
        live = sorted(held)  # neighbours in U2
        if len(live) + 1 < state.threshold:
            raise self._refuse(round_index, "mask", f"only {len(live)} neighbours sent shares; {state.threshold - 1} "
                               "needed for the sum to be recoverable -- not sending")
        state.held = held
        seeds = {v: derive_pair_seed(shared_secret(state.mask.private, state.adverts[v].mask_pk), job_id=self.job_id,
                                     round_index=round_index, site_a=self.site, site_b=v) for v in live}
        self_seed = derive_self_seed(state.self_secret, self.job_id, round_index)
        apply_pairwise_masks(vector, self.site, seeds, self_seed, cipher=self.config.cipher)
        state.masked = True
        self._update_record(round_index, masked_with=tuple(live))
        return MaskedInput(self.job_id, round_index, self.site, vector, tuple(live)).encode()

    # ---------------------------------------------------------------- 4. consistency check
    def consistency(self, round_index: int, request: bytes) -> bytes:
        """Sign the survivor/dropped sets the server proposes (once per round); returns the
        :class:`ConsistencySignature`. Raises :class:`ProtocolError` and ends the round for this
        site if the sets are unsafe or differ from a pair already signed for this round."""
        state = self._state(round_index, "consistency")
        if not state.masked:
            raise ProtocolError(f"consistency: we sent no masked input in round {round_index}")
        try:
            req = ConsistencyRequest.decode(request, self.job_id, round_index)
        except ProtocolError as err:
            raise self._abort(round_index, "consistency", err.reason) from None
        reason = self._survivor_problem(state, req.survivors, req.dropped)
        if state.signed is not None and (state.signed.survivors, state.signed.dropped) != (req.survivors, req.dropped):
            reason = (f"asked to sign a second, different survivor set {list(req.survivors)} "
                      f"(already signed {list(state.signed.survivors)}): the server is equivocating")
        if reason:
            raise self._abort(round_index, "consistency", reason)
        if state.signed is None:
            msg = ConsistencySignature(self.job_id, round_index, self.site, req.survivors, req.dropped)
            state.signed = ConsistencySignature(**{**msg.__dict__, "signature": self._sign(msg.signed_bytes())})
            self._update_record(round_index, survivors=req.survivors, dropped=req.dropped)
        return state.signed.encode()

    def _survivor_problem(self, state: _RoundState, survivors: tuple[str, ...], dropped: tuple[str, ...]) -> str:
        if self.site not in survivors:
            return "the survivor set does not count us, yet we sent a masked input"
        strangers = (set(survivors) | set(dropped)) - set(state.adverts)
        if strangers:
            return f"survivor/dropped sets name sites that are not participants: {sorted(strangers)}"
        if len(survivors) < state.threshold:
            return f"only {len(survivors)} survivors, threshold t={state.threshold}"
        return ""

    # ---------------------------------------------------------------- 5. unmask
    def unmask(self, round_index: int, request: bytes) -> bytes:
        """Check the relayed consistency signatures, then reveal the shares the server needs.

        Raises :class:`ProtocolError` (and forgets the round: nothing is ever revealed for it) for
        an unmask before our consistency signature, a request naming other sets than we signed,
        fewer than ``t`` valid signatures from distinct accepted survivors, any signature over a
        different set or not verifying, or a failed ``reveal_check``.
        """
        state = self._state(round_index, "unmask")
        if state.signed is None:
            raise self._abort(round_index, "unmask", "unmask requested before we signed the survivor set")
        try:
            req = UnmaskRequest.decode(request, self.job_id, round_index)
            signers = self._verified_signers(state, req)
        except ProtocolError as err:
            raise self._abort(round_index, "unmask", err.reason) from None
        if self.reveal_check is not None:
            reason = self.reveal_check(self.participants(round_index), state.signed.survivors)
            if reason:
                raise self._abort(round_index, "unmask", reason)
        survivors, dropped = set(state.signed.survivors), set(state.signed.dropped)
        reveal = {v: "self" for v in state.held if v in survivors}
        reveal.update({d: "key" for d in state.held if d in dropped})
        reveal[self.site] = "self"
        done = self._revealed.setdefault(round_index, {})
        clash = sorted(p for p, kind in reveal.items() if done.get(p, kind) != kind)
        if clash:  # unreachable while every round is answered once; kept as the invariant's guard
            raise self._abort(round_index, "unmask", f"would reveal both shares of {clash}")
        self_shares = {v: state.held[v][0] for v, kind in reveal.items() if kind == "self" and v != self.site}
        self_shares[self.site] = state.own_shares[0]
        key_shares = {d: state.held[d][1] for d, kind in reveal.items() if kind == "key"}
        done.update(reveal)
        self._update_record(round_index, signers=signers, revealed_self=tuple(sorted(self_shares)),
                            revealed_key=tuple(sorted(key_shares)))
        response = UnmaskResponse(self.job_id, round_index, self.site, self_shares, key_shares).encode()
        self.forget(round_index)
        return response

    def _verified_signers(self, state: _RoundState, req: UnmaskRequest) -> tuple[str, ...]:
        ours = state.signed
        assert ours is not None
        if (req.survivors, req.dropped) != (ours.survivors, ours.dropped):
            raise ProtocolError(f"the unmask request names survivors {list(req.survivors)}, but we signed "
                                f"{list(ours.survivors)}")
        signers: set[str] = set()
        for raw in req.signatures:
            sig = ConsistencySignature.decode(raw, self.job_id, ours.round)
            if sig.site in signers:
                raise ProtocolError(f"two consistency signatures from {sig.site!r}")
            if sig.site not in state.adverts:
                raise ProtocolError(f"consistency signature from {sig.site!r}, not an accepted participant")
            if sig.site not in ours.survivors:
                raise ProtocolError(f"consistency signature from {sig.site!r}, which is not a survivor")
            if (sig.survivors, sig.dropped) != (ours.survivors, ours.dropped):
                raise ProtocolError(f"{sig.site!r} signed survivors {list(sig.survivors)} / dropped "
                                    f"{list(sig.dropped)}, we were told {list(ours.survivors)} / "
                                    f"{list(ours.dropped)}: the server sent sites different sets")
            reason = self._verify(sig.site, state.adverts[sig.site].certificate, sig.signed_bytes(), sig.signature)
            if reason:
                raise ProtocolError(f"consistency signature of {sig.site!r} rejected: {reason}")
            signers.add(sig.site)
        if len(signers) < state.threshold:
            raise ProtocolError(f"only {len(signers)} valid consistency signatures, threshold t={state.threshold}")
        return tuple(sorted(signers))

    def forget(self, round_index: int) -> None:
        """Drop every secret of a round (after unmasking, or when the round is abandoned). The round
        number stays used: it can never be advertised again."""
        self._rounds.pop(round_index, None)


def decode_share_map(shares: dict[str, bytes]) -> dict[str, Share]:
    """Decode the share map of an :class:`UnmaskResponse` (raises ProtocolError on bad encodings)."""
    try:
        return {k: decode_share(v) for k, v in shares.items()}
    except ValueError as err:
        raise ProtocolError(f"bad share encoding: {err}") from err
