"""CurveZMQ keys for the chat: the broker's keypair, users' keypairs, and the allow-list.

A key directory looks like this::

    KEYDIR/broker.key            the broker's public certificate: give it to every client (--server-key)
    KEYDIR/broker.key_secret     the broker's secret certificate: stays on the broker's host
    KEYDIR/allowed/NAME.key      public certificate of each user allowed in; its metadata line
                                 ``user = "NAME"`` binds the key to that name
    KEYDIR/users/NAME.key_secret that user's secret certificate: hand it to them (--key), then delete it here

    chat-keys init KEYDIR              # the broker's keypair
    chat-keys add KEYDIR alice         # a keypair for alice, allowed and bound to the name alice
    chat-keys add KEYDIR bot --unbound # allowed, may use any free name
    chat-keys list KEYDIR

Certificates are the ZPL files of ``zmq.auth`` (czmq's format), so other ZeroMQ tools read them too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth

import messages as m

BROKER = "broker"
ALLOWED = "allowed"
USERS = "users"


class CurveKeys(NamedTuple):
    """What a client needs: the broker's public key and its own keypair (all z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes


def _write_public(path: Path, public: bytes, user: str | None) -> None:
    metadata = f'    user = "{user}"\n' if user else ""
    path.write_text(
        "#   ZeroMQ CURVE public certificate of a chat user\n"
        f'metadata\n{metadata}curve\n    public-key = "{public.decode("ascii")}"\n',
        encoding="utf-8",
    )


def _bound_user(path: Path) -> str | None:
    """The ``user`` metadata of a certificate, or None (the key may use any free name)."""
    in_metadata = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not raw.startswith((" ", "\t")):
            in_metadata = line == "metadata"
        elif in_metadata and line.startswith("user") and "=" in line:
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


def init(keydir: Path) -> Path:
    """Create the broker's keypair (refusing to overwrite one: clients hold its public key)."""
    keydir.mkdir(parents=True, exist_ok=True)
    if (keydir / f"{BROKER}.key_secret").exists():
        raise FileExistsError(f"{keydir / BROKER}.key_secret exists; remove it to make a new broker key")
    public, secret = zmq.auth.create_certificates(keydir, BROKER)
    os.chmod(secret, 0o600)
    return Path(public)


def add_user(keydir: Path, name: str, bind: bool = True) -> Path:
    """Make a keypair for ``name``, put its public key in the allow-list; returns the secret file to hand out."""
    if not m.valid_name(name):
        raise ValueError(f"{name!r} is not a valid user name")
    (keydir / ALLOWED).mkdir(parents=True, exist_ok=True)
    (keydir / USERS).mkdir(parents=True, exist_ok=True)
    if (keydir / ALLOWED / f"{name}.key").exists():
        raise FileExistsError(f"{name} already has a key in {keydir / ALLOWED}")
    public_file, secret_file = zmq.auth.create_certificates(keydir / USERS, name, metadata={"user": name})
    os.chmod(secret_file, 0o600)
    os.remove(public_file)  # the public half lives in the allow-list
    public, _ = zmq.auth.load_certificate(secret_file)
    _write_public(keydir / ALLOWED / f"{name}.key", public, name if bind else None)
    return Path(secret_file)


def server_keys(keydir: Path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(keydir / f"{BROKER}.key_secret")
    if secret is None:
        raise ValueError(f"{keydir / BROKER}.key_secret has no secret key")
    return public, secret


def allowed_keys(keydir: Path) -> dict[str, str | None] | None:
    """z85 public key -> the name it is bound to (or None); None when there is no allow-list (any key)."""
    folder = keydir / ALLOWED
    if not folder.is_dir():
        return None
    allowed: dict[str, str | None] = {}
    for path in sorted(folder.glob("*.key")):
        public, _ = zmq.auth.load_certificate(path)
        allowed[public.decode("ascii")] = _bound_user(path)
    return allowed


def client_keys(server_key_file: str | Path, key_file: str | Path) -> CurveKeys:
    server_public, _ = zmq.auth.load_certificate(server_key_file)
    public, secret = zmq.auth.load_certificate(key_file)
    if secret is None:
        raise ValueError(f"{key_file} holds no secret key (give the .key_secret file)")
    return CurveKeys(server_public, public, secret)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-keys", description="Make CurveZMQ keys for the chat broker and users.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the broker's keypair in KEYDIR")
    p_init.add_argument("keydir", type=Path)
    p_add = sub.add_parser("add", help="create a user's keypair and allow it in")
    p_add.add_argument("keydir", type=Path)
    p_add.add_argument("name")
    p_add.add_argument("--unbound", action="store_true", help="the key may use any free name (default: only NAME)")
    p_list = sub.add_parser("list", help="show the allow-list")
    p_list.add_argument("keydir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            public = init(args.keydir)
            print(f"broker keypair in {args.keydir}; give clients {public} (--server-key)")
        elif args.command == "add":
            secret = add_user(args.keydir, args.name, bind=not args.unbound)
            bound = "may use any free name" if args.unbound else f"may only be used as {args.name!r}"
            print(f"{args.name}: allowed, {bound}; hand {secret} to them (--key) and delete it here")
        else:
            allowed = allowed_keys(args.keydir)
            if allowed is None:
                print("no allow-list: any client with the broker's public key may connect")
            for key, user in (allowed or {}).items():
                print(f"{key}  {user or '(any name)'}")
    except (OSError, ValueError) as exc:
        print(f"chat-keys: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
