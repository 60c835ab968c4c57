"""Key mode: sign tokens locally with a mounted PEM key.

cryptography is imported inside the functions that need it, so that a
sidecar in issuer mode, which imports this module's neighbours, never loads
it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from oidc_tokens.claims import Subject, build_claims
from sidecar.tokens import RefreshError, Token

if TYPE_CHECKING:
    from oidc_tokens.keys import SigningKey
    from sidecar.config import PodInfo, ProviderConfig

log = logging.getLogger(__name__)

FileStamp = tuple[int, int, int]
"""(inode, mtime in ns, size): a rotated Secret changes at least one of them."""


@dataclass(frozen=True, slots=True)
class LoadedKey:
    stamp: FileStamp
    key: SigningKey
    kid: str


class KeyFileSigner:
    """Signs claims with the key in `path`.

    The PEM is parsed once and again only when the file's stamp changes, so a
    rotated key is picked up at the next refresh without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded: LoadedKey | None = None

    def current_key(self) -> LoadedKey:
        """The key now in the file; raises OSError or KeyFileError (a ValueError)."""
        from oidc_tokens.keys import key_id, load_private_key

        # Stamp and content come from one open file, so they always agree.
        with self.path.open("rb") as file:
            info = os.fstat(file.fileno())
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if self._loaded is not None and self._loaded.stamp == stamp:
                return self._loaded
            pem = file.read()
        # A quick check of the key: the sidecar loads it as it starts.
        key = load_private_key(
            pem, source=f"key file {self.path}", full_rsa_check=False
        )
        loaded = LoadedKey(stamp=stamp, key=key, kid=key_id(key))
        if self._loaded is not None:
            log.info(
                "signing key %s changed; now signing with kid %s", self.path, loaded.kid
            )
        else:
            log.info("loaded signing key %s (kid %s)", self.path, loaded.kid)
        self._loaded = loaded
        return loaded

    def sign(self, claims: dict[str, Any]) -> str:
        from oidc_tokens.signing import sign

        loaded = self.current_key()
        return sign(claims, loaded.key, kid=loaded.kid)


class KeySource:
    """Tokens signed here, with claims from the config and this node's clock."""

    mode: Literal["key"] = "key"

    def __init__(self, *, signer: KeyFileSigner, issuer: str, pod: PodInfo) -> None:
        self._signer = signer
        self._issuer = issuer
        self._pod = pod

    async def fetch(self, provider: ProviderConfig, *, now: float) -> Token:
        subject = Subject(
            identity=provider.identity,
            project=self._pod.project,
            namespace=self._pod.namespace,
            service_account=self._pod.service_account,
            pod=self._pod.name,
        )
        claims = build_claims(
            subject,
            issuer=self._issuer,
            audience=provider.audience,
            now=int(now),
            lifetime_seconds=provider.expiration_seconds,
        )
        try:
            return Token.parse(self._signer.sign(claims))
        except OSError as exc:
            raise RefreshError(
                "signing",
                f"cannot read the key file {self._signer.path} "
                f"({exc.strerror or exc}); check the mounted Secret "
                "(--key-file / WI_KEY_FILE)",
            ) from exc
        except (ValueError, TypeError) as exc:
            # KeyFileError says what is wrong with the key and how to make one.
            raise RefreshError("signing", f"{exc} (--key-file / WI_KEY_FILE)") from exc
