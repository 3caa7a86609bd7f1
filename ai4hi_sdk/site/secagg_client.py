"""Site side of secure aggregation (adapter around the pure protocol client), part of the
site-owned runtime.

:class:`SecureAggregationSite` answers the protocol tasks (keys, shares, consistency, unmask) and
turns a training round's result into a masked uint32 vector with its header. Everything it decides
comes from the site itself, never from the server:

* **who may take part**: the consortium's sites listed in the site's kit
  (``<kit>/ai4hi/consortium.json``, :data:`~ai4hi_sdk.site_paths.CONSORTIUM_LIST`), intersected with
  the job's sites as the server claims them (a claim can narrow the set, never widen it); the
  protocol client also refuses any certificate that is not a site's (server, admins, CA);
* **the minimum cohort and the threshold floor**: the site policy's
  ``min_secure_aggregation_sites``, ``min_secure_aggregation_threshold`` and
  ``secure_aggregation_threshold_rule``
  (:func:`~ai4hi_sdk.privacy.secagg.settings.site_policy_for`; the job's settings become the
  protocol's configuration in the same module);
* **the payload layout**: sized for the pinned site set, not for the server's site count;
* **client-level DP**: the noise share comes from the participants this site verified
  (:meth:`SecureAggregationSite.verified`), and an optional ``reveal_check`` stops the unmask step
  when too little noise survived.

It fails closed: if any step cannot be done safely (identity or consortium list missing, a key
that does not verify, too few neighbours, an inconsistent survivor set, a delta that cannot be
quantised) it raises :class:`~ai4hi_sdk.errors.RoundRefused` and nothing of the update is sent.
Every refusal of the protocol client is also printed to the site's log with its reason, and so is
the participant set the site accepted in each round.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.jobs.wire import (ACCOUNTING_METRICS, ADVERT, CONSISTENCY, CONSISTENCY_TASK, KEYS_TASK, MASKED,
                                 MASKED_HEADER, SECAGG_SITES, SHARES, SHARES_TASK, UNMASK, UNMASK_TASK)
from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, ProtocolError, SecAggClient, SecAggConfig
from ai4hi_sdk.privacy.secagg.settings import (codec_for, masked_metric_names,  # noqa: F401 (re-exported)
                                               protocol_config, site_policy_for)
from ai4hi_sdk.privacy.secagg.protocol.client import RevealCheck
from ai4hi_sdk.privacy.secagg.protocol.identity import (FED_CLIENT, CertificateVerifier, IdentityError, SiteIdentity,
                                                        server_identities)
from ai4hi_sdk.privacy.secagg.protocol.messages import MaskedInput
from ai4hi_sdk.site_paths import CONSORTIUM_LIST

#: fault injection for tests and demos: "site:stage[@round][,site:stage[@round]...]"
DROP_ENV = "AI4HI_SECAGG_DROP"
DROP_STAGES = ("after-advertise", "after-shares", "after-input")


def to_wire(data: bytes) -> np.ndarray:
    """Protocol bytes as a uint8 array (an NVFlare params entry)."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def from_wire(value: object) -> bytes:
    """Inverse of :func:`to_wire`; accepts numpy or torch uint8 arrays."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"protocol message must be a 1-D uint8 array, got {arr.dtype} {arr.shape}")
    return arr.tobytes()


def parse_drops(text: str | None) -> dict[str, tuple[str, int]]:
    """``"hospital-2:after-shares@1"`` -> ``{"hospital-2": ("after-shares", 1)}`` (round 0 by default)."""
    drops: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        site, _, rest = item.partition(":")
        stage, _, rnd = rest.partition("@")
        if not site or stage not in DROP_STAGES or (rnd and not rnd.isdigit()):
            raise ValueError(f"bad drop '{item}': expected SITE:STAGE[@ROUND] with STAGE one of {', '.join(DROP_STAGES)}")
        drops[site] = (stage, int(rnd or 0))
    return drops


def drop_for(site: str) -> tuple[str, int] | None:
    """This site's injected drop from the environment, if any."""
    return parse_drops(os.environ.get(DROP_ENV)).get(site)


@dataclass(frozen=True)
class ConsortiumList:
    """What a site's kit says about its consortium.

    Attributes:
        sites: the consortium's site names (the only possible secure-aggregation participants).
        server_names: the server's identities (certificate common names) a site refuses as a participant.
    """

    sites: frozenset[str]
    server_names: frozenset[str]


def load_consortium_list(workspace: str | Path) -> ConsortiumList:
    """Read ``<workspace>/ai4hi/consortium.json`` (and the server identity of ``startup/fed_client.json``
    where the kit has one). Raises :class:`RoundRefused` naming the file and the reason (fail closed:
    a site that does not know its consortium takes part in no secure aggregation)."""
    path = Path(workspace) / CONSORTIUM_LIST
    try:
        data = json.loads(path.read_text())
        sites = data["sites"]
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) and s for s in sites):
            raise ValueError("'sites' must be a non-empty list of site names")
        server = data.get("server")
        if server is not None and not isinstance(server, str):
            raise ValueError("'server' must be the server's host name")
    except FileNotFoundError:
        raise RoundRefused(f"secure aggregation: no consortium site list at {path} (written by `ai4hi provision`); "
                           "without it this site cannot tell the consortium's sites from anyone else") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RoundRefused(f"secure aggregation: {path}: unreadable consortium site list ({err})") from None
    names = {server} if server else set()
    if (Path(workspace) / "startup" / FED_CLIENT).is_file():
        try:
            names |= server_identities(Path(workspace) / "startup")
        except IdentityError as err:
            raise RoundRefused(f"secure aggregation: {err}") from None
    return ConsortiumList(frozenset(sites), frozenset(names))


def _names(names: Any) -> str:
    names = sorted(names)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


class SecureAggregationSite:
    """Protocol state of one site for one job.

    Args:
        secure_aggregation: the job's ``privacy.secure_aggregation`` settings.
        site: this site's name (as in its certificate).
        job_id: the job (every message is bound to it).
        workspace: the site workspace (its provisioned identity in ``startup/``, its consortium
            list in ``ai4hi/consortium.json``).
        initial_state: the exchanged state layout (names and shapes).
        declared_metrics: metric names the site's trainer may report.
        policy: the site's :class:`~ai4hi_sdk.config.site_policy.SitePrivacyPolicy` (cohort, threshold
            floor and rule); ``None``: the defaults.
        reveal_check: the protocol client's last check before it reveals any share (see
            :class:`~ai4hi_sdk.privacy.secagg.protocol.SecAggClient`), e.g. the client-level DP noise
            left by dropouts.
        log: where the site's protocol log lines go (the site's own log).
    """

    def __init__(self, secure_aggregation: Any, site: str, job_id: str, workspace: str | Path | None,
                 initial_state: Mapping[str, Any], declared_metrics: frozenset[str], *, policy: Any = None,
                 reveal_check: RevealCheck | None = None, log: Callable[[str], None] = print):
        self.spec = secure_aggregation
        self._config: SecAggConfig | None = None
        self.site, self.job_id, self.workspace = site, job_id, workspace
        self.initial_state, self.declared_metrics = initial_state, declared_metrics
        self.site_policy = site_policy_for(policy)
        self.reveal_check = reveal_check
        self._log = log
        self._client: SecAggClient | None = None
        self._codec: PayloadCodec | None = None
        self._claimed: tuple[str, ...] | None = None
        #: the job's sites as this site pins them (consortium list & the server's claim)
        self.allowed: tuple[str, ...] = ()
        self._logged = 0
        self.drop = drop_for(self.site)
        #: set once a fault-injected drop happened: the site answers nothing from then on
        self.dropped = False

    def log(self, message: str) -> None:
        self._log(f"[ai4hi] {self.site}: secure aggregation: {message}")

    # ---------------------------------------------------------------- who takes part
    def _claimed_sites(self, meta: Mapping[str, Any]) -> tuple[str, ...]:
        claimed = meta.get(SECAGG_SITES)
        if not isinstance(claimed, (list, tuple)) or not all(isinstance(s, str) and s for s in claimed):
            raise RoundRefused("secure aggregation: the task does not name the job's sites")
        return tuple(sorted(set(claimed)))

    def client_for(self, meta: Mapping[str, Any]) -> SecAggClient:
        """The protocol client, made on the first task: pinned to the consortium's sites that the
        server says take part (a later task naming other sites is refused)."""
        claimed = self._claimed_sites(meta)
        if self._client is not None:
            if claimed != self._claimed:
                raise RoundRefused("secure aggregation: the server changed the job's site list during the job")
            return self._client
        if self.workspace is None:
            raise RoundRefused("secure aggregation needs the site workspace (its provisioned identity)")
        consortium = load_consortium_list(self.workspace)
        if self.site not in consortium.sites:
            raise RoundRefused(f"secure aggregation: this site ({self.site}) is not in its own kit's consortium list")
        strangers = set(claimed) - consortium.sites
        if strangers:
            self.log(f"the server names {len(strangers)} job site(s) outside this site's consortium list, ignored: "
                     f"{_names(strangers)}")
        allowed = tuple(sorted(consortium.sites & set(claimed)))
        if self.site not in allowed:
            raise RoundRefused("secure aggregation: the server does not name this site among the job's sites")
        try:
            identity = SiteIdentity.load(Path(self.workspace) / "startup", self.site)
            verifier = CertificateVerifier(identity.root_ca_pem, server_names=consortium.server_names)
        except IdentityError as err:
            raise RoundRefused(f"secure aggregation: {err}") from None
        self._client = SecAggClient(self.site, self.job_id, self.config, sign=identity.sign,
                                    certificate=identity.certificate_pem, verify=verifier.check,
                                    participants=allowed, policy=self.site_policy, reveal_check=self.reveal_check)
        self._claimed, self.allowed = claimed, allowed
        self.log(f"job sites pinned to {_names(allowed)} (policy: at least {self.site_policy.min_sites} sites, "
                 f"threshold floor {self.site_policy.threshold_floor}, rule {self.site_policy.threshold_rule})")
        return self._client

    @property
    def config(self) -> SecAggConfig:
        """The protocol's configuration from the job's settings (an unusable combination: refused)."""
        if self._config is None:
            try:
                self._config = protocol_config(self.spec)
            except ValueError as err:
                raise RoundRefused(f"secure aggregation: {err}") from None
        return self._config

    @property
    def client(self) -> SecAggClient:
        if self._client is None:
            raise RoundRefused("secure aggregation: no key exchange has taken place in this job")
        return self._client

    def codec(self) -> PayloadCodec:
        """The payload layout for the pinned site set (the server's site count plays no part)."""
        n_sites = len(self.allowed)
        if self._codec is None or self._codec.n_sites != n_sites:
            self._codec = codec_for(self.config, self.initial_state, self.declared_metrics, n_sites)
        return self._codec

    def verified(self, round_index: int) -> tuple[tuple[str, ...], int]:
        """``(participants, t)``: the participants this site verified for the round (itself included,
        sorted) and the threshold it shares with -- the site's own view, never the server's claim."""
        try:
            record = self.client.record(round_index)
        except ProtocolError as err:
            raise RoundRefused(f"secure aggregation: {err.reason}") from None
        return record.participants, int(record.threshold)

    def _log_rejections(self) -> None:
        if self._client is None:
            return
        for r in self._client.rejections[self._logged:]:
            self.log(f"refused at {r['step']} of round {r['round']} ({r['site']}): {r['reason']}")
        self._logged = len(self._client.rejections)

    def _log_accepted(self, round_index: int) -> None:
        names, t = self.verified(round_index)
        self.log(f"round {round_index}: accepted participants {_names(names)} (t = {t})")

    def _maybe_drop(self, stage: str, round_index: int) -> None:
        if self.drop == (stage, round_index):
            print(f"[ai4hi] {self.site}: fault injection: dropping out {stage} of round {round_index}")
            self.dropped = True

    # ---------------------------------------------------------------- protocol tasks
    def handle(self, task: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Answer a protocol task; returns the result params (uint8 arrays)."""
        try:
            client = self.client_for(meta)
            r = int(meta["round"])
            if task == KEYS_TASK:
                out = {ADVERT: to_wire(client.advertise(r))}
                self._maybe_drop("after-advertise", r)
                return out
            if task == SHARES_TASK:
                out = {SHARES: to_wire(client.share_keys(r, list(meta["adverts"])))}
                self._log_accepted(r)
                self._maybe_drop("after-shares", r)
                return out
            if task == CONSISTENCY_TASK:
                return {CONSISTENCY: to_wire(client.consistency(r, meta["request"]))}
            if task == UNMASK_TASK:
                return self._unmask(client, r, meta)
        except ProtocolError as err:
            raise RoundRefused(f"secure aggregation: {err.reason}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise RoundRefused(f"secure aggregation: malformed {task} task ({type(err).__name__}: {err})") from None
        finally:
            self._log_rejections()
        raise RoundRefused(f"unknown secure-aggregation task {task!r}")

    def _unmask(self, client: SecAggClient, r: int, meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {UNMASK: to_wire(client.unmask(r, meta["request"]))}
        record = client.record(r)
        self.log(f"round {r}: signed survivors {_names(record.survivors)}, verified {len(record.signers)} "
                 f"consistency signatures, revealed self-mask shares of {len(record.revealed_self)} and mask-key "
                 f"shares of {len(record.revealed_key)} site(s)")
        if meta.get("adverts_next"):
            try:
                out[SHARES] = to_wire(client.share_keys(r + 1, list(meta["adverts_next"])))
            except ProtocolError as err:  # this round is done; we just do not take part in the next
                self.log(f"not joining round {r + 1}: {err.reason}")
                client.forget(r + 1)
            else:
                self._log_accepted(r + 1)
                self._maybe_drop("after-shares", r + 1)
        return out

    # ---------------------------------------------------------------- training round
    def check_weight(self, meta: Mapping[str, Any], num_samples: int) -> None:
        """Before training: the site's weight must fit the job's public bound (else the masked sum
        could not be decoded); refuse now, before anything is spent."""
        self.client_for(meta)
        if num_samples > self.config.max_samples_per_site:
            raise RoundRefused(f"secure aggregation: this site's training split ({num_samples} examples) exceeds "
                               f"the job's max_samples_per_site ({self.config.max_samples_per_site})")
        try:
            self.codec()  # the layout must be buildable (overflow guard)
        except ValueError as err:
            raise RoundRefused(f"secure aggregation: {err}") from None

    def package(self, meta: Mapping[str, Any]):
        """An ``encode`` callback: quantise + mask the delta.

        Returns ``encode(delta, metrics, num_samples) -> (params, clear_metrics, result_meta)``:
        the masked uint32 vector, its uint8 header (job, round, site, the neighbours it was masked
        with) and next round's signed keys; only the accounting metrics travel in the clear.
        """
        client = self.client_for(meta)
        r = int(meta["round"])
        inbox = dict((meta.get("inboxes") or {}).get(self.site) or {})
        next_round = meta.get("next_round")

        def encode(delta: Mapping[str, Any], metrics: Mapping[str, float], num_samples: int):
            try:
                codec = self.codec()
                arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                          for k, v in delta.items()}
                vector = codec.encode(arrays, int(num_samples), {k: v for k, v in metrics.items() if k in codec.metric_names})
                client.mask(r, inbox, vector)  # masks ``vector`` in place
                masked = MaskedInput(self.job_id, r, self.site, vector, client.record(r).masked_with)
            except (ProtocolError, ValueError) as err:
                raise RoundRefused(f"secure aggregation: {getattr(err, 'reason', err)}") from None
            finally:
                self._log_rejections()
            params: dict[str, np.ndarray] = {MASKED: masked.vector, MASKED_HEADER: to_wire(masked.header())}
            if next_round is not None:
                params[ADVERT] = to_wire(client.advertise(int(next_round)))
            clear = {k: v for k, v in metrics.items() if k in ACCOUNTING_METRICS}
            return params, clear, {}

        return encode

    def after_train(self, meta: Mapping[str, Any]) -> None:
        r = int(meta["round"])
        self._maybe_drop("after-input", r)
        if meta.get("next_round") is not None:
            self._maybe_drop("after-advertise", int(meta["next_round"]))

    def forget(self, round_index: int) -> None:
        if self._client is not None:
            self._client.forget(round_index)
