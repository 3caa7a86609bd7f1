"""Site side of SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020) as a pure state machine.

Per round ``r`` a site runs four steps; every message is bound to ``(job_id, r)``:

1. :meth:`SecAggClient.advertise` -- fresh X25519 key pairs ``c`` (share encryption) and ``s``
   (mask seeds), signed with the site's provisioned key.
2. :meth:`SecAggClient.share_keys` -- verify every advertisement (root CA, certificate name,
   signature; our own key must come back unchanged), fix the round's participants ``U1`` and the
   k-regular neighbour graph over them, draw a fresh self secret ``b``, Shamir-split ``b`` and the
   private half of ``s`` (``t`` of ``|U1|`` points, x = 1 + position in sorted ``U1``) and seal
   one pair of shares for each neighbour (AES-GCM under a key from ECDH over ``c``).
3. :meth:`SecAggClient.mask` -- open the shares that reached us (``U2`` = their senders), refuse if
   fewer than ``t`` of our neighbourhood are left, then add the self mask ``PRG(b)`` and the pair
   masks ``+-PRG(s_uv)`` for each neighbour ``v`` in ``U2`` to the quantised vector.
4. :meth:`SecAggClient.unmask` -- for each neighbour the server calls a survivor, reveal our share
   of its ``b``; for each it calls dropped, our share of its ``s`` -- never both for one site, only
   for sites in ``U2``, only if at least ``t`` survived, and only once per round. Then every secret
   of the round is forgotten.

Keys are fresh every round, so revealing a dropped site's ``s`` in one round exposes nothing of any
other round, and the site may take part again in the next. The protocol tolerates an
honest-but-curious server; a site that cannot continue safely raises :class:`ProtocolError`
(fail closed: it sends nothing for the round).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from ..primitives.encoding import decode_message, decode_share, encode_message, encode_share
from ..primitives.kdf import derive_pair_seed, derive_self_seed
from ..primitives.keys import KeyPair, generate_keypair, shared_secret
from ..primitives.masking import apply_pairwise_masks
from ..primitives.shamir import Share, split
from .config import SecAggConfig
from .graph import neighbour_graph
from .messages import (AdvertiseKeys, MaskedInput, ProtocolError, ShareKeys, Signer, UnmaskRequest, UnmaskResponse,
                       Verifier, open_share, seal_share)


def graph_seed(job_id: str, round_index: int) -> bytes:
    """Seed of the round's neighbour graph (public: server and sites compute the same graph)."""
    return f"ai4hi-secagg-graph\x00{job_id}\x00{round_index}".encode()


def share_index(participants: list[str] | tuple[str, ...], site: str) -> int:
    """Shamir x-coordinate of ``site``'s shares: 1 + its position among the sorted participants."""
    return sorted(participants).index(site) + 1


@dataclass
class _RoundState:
    cipher: KeyPair
    mask: KeyPair
    adverts: dict[str, AdvertiseKeys] = field(default_factory=dict)
    neighbours: frozenset[str] = frozenset()
    threshold: int = 0
    self_secret: bytes = b""
    own_shares: tuple[bytes, bytes] = (b"", b"")  # (b share, s share) held for ourselves
    held: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # sender -> its shares for us
    masked: bool = False
    unmasked: bool = False


class SecAggClient:
    """One site's protocol state for one job.

    Args:
        site: this site's name (as in its certificate).
        job_id: the job; every message and key derivation is bound to it.
        config: the job's :class:`SecAggConfig`.
        sign: signs bytes with the site's provisioned key.
        certificate: the site's certificate (PEM), sent with its advertisement.
        verify: checks another site's certificate and signature (see :data:`Verifier`).
    """

    def __init__(self, site: str, job_id: str, config: SecAggConfig, *, sign: Signer, certificate: bytes,
                 verify: Verifier):
        self.site, self.job_id, self.config = site, job_id, config
        self._sign, self._certificate, self._verify = sign, certificate, verify
        self._rounds: dict[int, _RoundState] = {}

    def _state(self, round_index: int, step: str) -> _RoundState:
        state = self._rounds.get(round_index)
        if state is None:
            raise ProtocolError(f"{step}: no key advertisement of ours for round {round_index}")
        return state

    # ---------------------------------------------------------------- 1. advertise
    def advertise(self, round_index: int) -> bytes:
        """Fresh keys for ``round_index``; returns the signed :class:`AdvertiseKeys`."""
        if round_index in self._rounds:
            raise ProtocolError(f"keys for round {round_index} were already advertised")
        state = _RoundState(cipher=generate_keypair(), mask=generate_keypair())
        self._rounds[round_index] = state
        msg = AdvertiseKeys(self.job_id, round_index, self.site, state.cipher.public, state.mask.public,
                            self._certificate)
        return AdvertiseKeys(**{**msg.__dict__, "signature": self._sign(msg.signed_bytes())}).encode()

    # ---------------------------------------------------------------- 2. share keys
    def share_keys(self, round_index: int, adverts: list[bytes]) -> bytes:
        """Verify the relayed advertisements and seal our shares for each neighbour."""
        state = self._state(round_index, "share_keys")
        if state.adverts:
            raise ProtocolError(f"shares for round {round_index} were already sent")
        verified: dict[str, AdvertiseKeys] = {}
        for raw in adverts:
            ad = AdvertiseKeys.decode(raw, self.job_id, round_index)
            if ad.site in verified:
                raise ProtocolError(f"two advertisements for {ad.site!r}")
            reason = ad.check_signature(self._verify)
            if reason:
                raise ProtocolError(f"advertisement of {ad.site!r} rejected: {reason}")
            verified[ad.site] = ad
        mine = verified.get(self.site)
        if mine is None or (mine.cipher_pk, mine.mask_pk) != (state.cipher.public, state.mask.public):
            raise ProtocolError("our own advertisement is missing or was altered")
        participants = sorted(verified)
        n = len(participants)
        try:
            self.config.validate_for(n)
            t = self.config.effective_threshold(n)
            neighbours = neighbour_graph(participants, self.config.degree(n), graph_seed(self.job_id, round_index))
        except ValueError as err:
            raise ProtocolError(f"cannot run secure aggregation with {n} sites: {err}") from err
        state.adverts, state.neighbours, state.threshold = verified, neighbours[self.site], t
        state.self_secret = secrets.token_bytes(32)
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
            raise ProtocolError(f"shares from non-neighbours {sorted(unknown)}")
        for sender, sealed in inbox.items():
            secret = shared_secret(state.cipher.private, state.adverts[sender].cipher_pk)
            plain = open_share(sealed, secret, job_id=self.job_id, round_index=round_index,
                               sender=sender, receiver=self.site)
            _, pair = decode_message(plain, kind="SharePair", schema={"self": bytes, "key": bytes})
            state.held[sender] = (pair["self"], pair["key"])
        live = sorted(state.held)  # neighbours in U2
        if len(live) + 1 < state.threshold:
            raise ProtocolError(f"only {len(live)} neighbours sent shares; {state.threshold - 1} needed "
                                "for the sum to be recoverable -- not sending")
        seeds = {v: derive_pair_seed(shared_secret(state.mask.private, state.adverts[v].mask_pk), job_id=self.job_id,
                                     round_index=round_index, site_a=self.site, site_b=v) for v in live}
        self_seed = derive_self_seed(state.self_secret, self.job_id, round_index)
        apply_pairwise_masks(vector, self.site, seeds, self_seed, cipher=self.config.cipher)
        state.masked = True
        return MaskedInput(self.job_id, round_index, self.site, vector, tuple(live)).encode()

    # ---------------------------------------------------------------- 4. unmask
    def unmask(self, round_index: int, request: bytes) -> bytes:
        """Reveal the shares the server needs to remove masks, after the safety checks."""
        state = self._state(round_index, "unmask")
        if not state.masked:
            raise ProtocolError(f"unmask: we sent no masked input in round {round_index}")
        if state.unmasked:
            raise ProtocolError(f"unmask for round {round_index} was already answered (replay?)")
        req = UnmaskRequest.decode(request, self.job_id, round_index)
        live = set(state.held) | {self.site}
        if self.site not in req.survivors:
            raise ProtocolError("unmask: the request does not count us as a survivor")
        strangers = (set(req.survivors) | set(req.dropped)) - set(state.adverts)
        if strangers:
            raise ProtocolError(f"unmask: unknown sites {sorted(strangers)}")
        if len(req.survivors) < state.threshold:
            raise ProtocolError(f"unmask: only {len(req.survivors)} survivors, threshold {state.threshold}")
        self_shares = {v: state.held[v][0] for v in req.survivors if v in state.held}
        self_shares[self.site] = state.own_shares[0]
        key_shares = {d: state.held[d][1] for d in req.dropped if d in state.held}
        assert not set(self_shares) & set(key_shares) and set(self_shares) | set(key_shares) <= live
        state.unmasked = True
        response = UnmaskResponse(self.job_id, round_index, self.site, self_shares, key_shares).encode()
        self.forget(round_index)
        return response

    def forget(self, round_index: int) -> None:
        """Drop every secret of a round (after unmasking, or when the round is abandoned)."""
        self._rounds.pop(round_index, None)


def decode_share_map(shares: dict[str, bytes]) -> dict[str, Share]:
    """Decode the share map of an :class:`UnmaskResponse` (raises ProtocolError on bad encodings)."""
    try:
        return {k: decode_share(v) for k, v in shares.items()}
    except ValueError as err:
        raise ProtocolError(f"bad share encoding: {err}") from err
