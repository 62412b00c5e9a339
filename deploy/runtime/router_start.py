"""The router container's entrypoint: preflight, key hashes, TLS, then HAProxy as an unprivileged user.

Runs as root only to read the TLS files whatever their owner on the host, and to make the self-signed CA
and certificate in ./tls on first start. Writes, into the container's own /run/router (never a host file),
the map of the keys' SHA-256 hashes to their variable names (HAProxy hashes each request's key and looks it
up: no key is kept in clear in any file) and the PEM HAProxy serves (certificate chain + key). Then drops to
the `router` user and execs HAProxy. Fails fast, naming the fix, when a key variable is missing, empty,
shared or too short.

  router_start.py --key NAME ... [--tls-dir DIR [--own-cert | --host NAME ...]]
  router_start.py --health URL       (the compose healthcheck)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import pwd
import ssl
import sys
import urllib.request
from pathlib import Path

USER = "router"
PRIVATE = Path("/run/router")  # keys.map and router.pem, read by HAProxy as USER; the container's own filesystem
CONFIG = "/etc/router/haproxy.cfg"  # rendered by deploy/router.py (compose config)
# -dMglobal,no-poison: Debian builds HAProxy with memory-pool debugging on, which without this costs four
# mmap/munmap pairs per request (~120 us CPU). Re-check with `haproxy -dMhelp` on an upgrade.
HAPROXY = ["haproxy", "-db", "-dMglobal,no-poison", "-f", CONFIG]
BASE_NAMES = ("localhost", "127.0.0.1", "::1", "router")  # the compose service name: Prometheus scrapes it
LEAF_DAYS, CA_DAYS, RENEW_DAYS = 397, 3650, 30
# The key rule, checked here and followed by the keys the generator makes (deploy/write.py imports these).
# The sk- form (as OpenAI's) tells a key from other secrets in logs and scanners; the length makes it unguessable.
KEY_PREFIX = "sk-"
MIN_KEY_LEN = 20
ROUTER_ENV_FILE = "router-keys.env"  # where render puts the router's keys other than VLLM_API_KEY (only it reads them)


def fail(message: str) -> None:
    print(f"router: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_keys(names: list[str]) -> dict[str, str]:
    """Each key variable → its value, after checking them: set, long enough, the sk- form, each its own."""
    seen: dict[str, str] = {}
    for name in names:
        value = os.environ.get(name, "")
        if not value.strip():  # empty or blank: vLLM (and a client's header) would take it for no key
            where = "the stack's env_file (secrets.env)" if name == "VLLM_API_KEY" else ROUTER_ENV_FILE
            fail(f"{name} is {'empty or blank' if name in os.environ else 'not set'}. Fix: add `{name}=sk-...` to {where} beside compose.yaml, "
                 "e.g. rendering again adds a generated one, then `docker compose up -d router`.")
        if not value.startswith(KEY_PREFIX) or len(value) < MIN_KEY_LEN:
            fail(f"{name} must start with {KEY_PREFIX} and be at least {MIN_KEY_LEN} characters. Fix: set it to {KEY_PREFIX} "
                 "followed by a random string, such as the output of `python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(32))'`.")
        if value in seen:
            fail(f"{name} and {seen[value]} hold the same key, so their scopes cannot be told apart. Fix: give each its own.")
        seen[value] = name
    return {name: value for value, name in seen.items()}


def _names(hosts: list[str]):
    from cryptography import x509

    out = []
    for h in dict.fromkeys([*BASE_NAMES, *hosts]):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _expiry(cert) -> datetime.datetime:
    # Debian bookworm's cryptography (38) has only the naive-UTC not_valid_after; 42+ adds not_valid_after_utc.
    after = getattr(cert, "not_valid_after_utc", None)
    return after or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def self_signed(tls: Path, hosts: list[str]) -> tuple[Path, Path]:
    """A local CA (kept, so clients trust it once) and a server certificate for HOSTS, renewed when the names
    change or it nears expiry. Written whole (temp file + rename); keys mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_crt, ca_key, crt, key = (tls / n for n in ("ca.crt", "ca.key", "router.crt", "router.key"))
    if not (ca_crt.exists() and ca_key.exists()):
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vllm-compose local CA {now:%Y-%m-%d}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
                .sign(k, hashes.SHA256()))
        write_file(ca_key, pem_key(k), 0o600)
        write_file(ca_crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        crt.unlink(missing_ok=True)
        print(f"router: made a local CA: {ca_crt.name} in ./tls (clients trust this file)", flush=True)
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    wanted = _names(hosts)
    if crt.exists() and key.exists():
        old = x509.load_pem_x509_certificate(crt.read_bytes())
        sans = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if (set(sans) == set(wanted) and old.issuer == ca.subject
                and _expiry(old) - now > datetime.timedelta(days=RENEW_DAYS)):
            return crt, key
    ca_private = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    k = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router")])).issuer_name(ca.subject)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_private.public_key()), critical=False)
            .sign(ca_private, hashes.SHA256()))
    write_file(key, pem_key(k), 0o600)
    write_file(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    print(f"router: issued {crt.name} for {', '.join(dict.fromkeys([*BASE_NAMES, *hosts]))}, signed by ./tls/ca.crt, "
          f"valid {LEAF_DAYS} days", flush=True)
    return crt, key


def own_cert(tls: Path) -> tuple[Path, Path]:
    crt, key = tls / "cert.pem", tls / "key.pem"
    for path, what in ((crt, "certificate"), (key, "private key")):
        if not path.is_file():
            fail(f"the TLS {what} was not mounted at {path} (the spec's router.tls path does not exist on the host?). "
                 "Fix: point router.tls.cert/key at existing PEM files and render again.")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(crt, key)
    except (ssl.SSLError, ValueError) as e:
        fail(f"the TLS certificate and key do not load together ({e}). Fix: give the PEM chain and its own private key.")
    return crt, key


def health(url: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # our own certificate, checked from inside
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return 0 if r.status == 200 else 1
    except OSError as e:
        print(f"router health: {e}", file=sys.stderr)
        return 1


def write_file(path: Path, data: bytes, mode: int, owner: pwd.struct_passwd | None = None) -> None:
    """PATH written whole (a temporary file renamed over it), with MODE (and OWNER) set before it appears."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if owner:
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="router_start.py")
    p.add_argument("--health")
    p.add_argument("--key", action="append", default=[], help="a key variable in the environment (env_file)")
    p.add_argument("--tls-dir", type=Path)
    p.add_argument("--own-cert", action="store_true")
    p.add_argument("--host", action="append", default=[])
    a = p.parse_args(argv)
    if a.health:
        return health(a.health)
    keys = check_keys(a.key)
    user = pwd.getpwnam(USER)
    PRIVATE.mkdir(mode=0o700, exist_ok=True)
    os.chown(PRIVATE, user.pw_uid, user.pw_gid)
    write_file(PRIVATE / "keys.map", "".join(f"{hashlib.sha256(v.encode()).hexdigest()} {n}\n" for n, v in keys.items()).encode(),
               0o400, user)
    if a.tls_dir:
        crt, key = own_cert(a.tls_dir) if a.own_cert else self_signed(a.tls_dir, a.host)
        write_file(PRIVATE / "router.pem", (crt.read_text().rstrip("\n") + "\n" + key.read_text()).encode(), 0o400, user)
    # The router's own keys leave its environment: HAProxy needs only VLLM_API_KEY (sent to the servers).
    for name in keys:
        if name != "VLLM_API_KEY":
            del os.environ[name]
    print(f"router: {len(keys)} key(s) checked, TLS {'on' if a.tls_dir else 'off'}; starting HAProxy as {USER}", flush=True)
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir
    os.execvp(HAPROXY[0], HAPROXY)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
