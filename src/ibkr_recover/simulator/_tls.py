"""Certificates for the HTTPS simulator, minted per run with trustme.

Besides the good certificate (``localhost``, ``127.0.0.1``, ``::1``), two broken ones let the
client's TLS failure paths be tested: one that expired yesterday and one issued for another
host name. All three are signed by the same throw-away CA, whose PEM is written to a file so
that clients can trust it with ``--cacert``.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import trustme

__all__ = ["CertKind", "server_context"]

#: ``valid``; ``expired`` (not after yesterday); ``wrong_host`` (issued for another name).
CertKind = Literal["valid", "expired", "wrong_host"]


def server_context(ca_path: Path, cert: CertKind = "valid") -> ssl.SSLContext:
    """Mint a CA and a server certificate; write the CA PEM to ``ca_path``.

    Parameters
    ----------
    ca_path
        Where the CA certificate (PEM) is written.
    cert
        Which server certificate to serve.

    Returns
    -------
    ssl.SSLContext
        A server context holding the certificate and its key.
    """
    ca = trustme.CA(organization_name="ibkr-recover simulator")
    if cert == "expired":
        now = datetime.now(UTC)
        leaf = ca.issue_cert(
            "localhost",
            "127.0.0.1",
            "::1",
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
        )
    elif cert == "wrong_host":
        leaf = ca.issue_cert("gateway.invalid")
    else:
        leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    ca_path.parent.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(ca_path))
    return context
