"""Command-line helpers shared by every program that connects to a broker (console, window, logger,
gateway, relay): where the broker is, which keys, which name and rooms."""

from __future__ import annotations

import argparse
from typing import Any

import keys
import messages as m
import transport


def endpoints(host: str, router: str | None = None, pub: str | None = None) -> tuple[str, str]:
    """The (inbox, feed) endpoints: explicit ``router``/``pub`` win, else tcp on ``host`` at the default ports."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return (router or f"tcp://{host}:{m.DEFAULT_ROUTER_PORT}", pub or f"tcp://{host}:{m.DEFAULT_PUB_PORT}")


def brokers(host: str, router: str | None = None, pub: str | None = None) -> tuple[list[str], list[str]]:
    """Every broker's (inbox, feed) endpoints, in the order to try them: each option may list several, comma
    separated (front doors of one cluster); ``router``/``pub`` win over ``host``, as in ``endpoints``."""
    hosts = [h.strip() for h in host.split(",") if h.strip()] or ["localhost"]
    defaults = [endpoints(h) for h in hosts]
    routers = _listed(router) or [inbox for inbox, _ in defaults]
    pubs = _listed(pub) or [feed for _, feed in defaults]
    return transport.broker_endpoints(routers, pubs)


def _listed(endpoints: str | None) -> list[str]:
    return [e.strip() for e in (endpoints or "").split(",") if e.strip()]


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """--host/--router/--pub and the CURVE keys."""
    parser.add_argument(
        "--host",
        default="localhost",
        help="broker host, for tcp at the default ports; several, comma separated, are tried in turn when one "
        "is silent (default: localhost)",
    )
    parser.add_argument(
        "--router",
        metavar="ENDPOINT",
        help=f"broker inbox, any ZeroMQ endpoint, or several, comma separated (default: tcp://HOST:{m.DEFAULT_ROUTER_PORT})",
    )
    parser.add_argument(
        "--pub",
        metavar="ENDPOINT",
        help=f"broker feed, any ZeroMQ endpoint, or several, as many as inboxes (default: tcp://HOST:{m.DEFAULT_PUB_PORT})",
    )
    parser.add_argument(
        "--server-key", metavar="FILE", help="the broker's public certificate (broker.key), for a CURVE broker"
    )
    parser.add_argument("--key", metavar="FILE", help="your secret certificate (NAME.key_secret), for a CURVE broker")


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """``router``, ``pub`` (lists: one entry per broker) and ``curve`` for ``ChatClient(**connection(args))``,
    from ``add_endpoint_args``."""
    router, pub = brokers(args.host, args.router, args.pub)
    curve = None
    if args.server_key or args.key:
        if not (args.server_key and args.key):
            raise ValueError("--server-key and --key go together")
        curve = keys.client_keys(args.server_key, args.key)
    return {"router": router, "pub": pub, "curve": curve}


def no_broker_hint(conn: dict[str, Any]) -> str:
    """What to check when no broker answers: a CURVE broker says nothing to a client without its keys."""
    if conn["curve"] is None:
        return "is a broker running there? If it uses CURVE, give --server-key and --key"
    return "is a broker running there, and do --server-key and --key match its keys?"


def room_name(text: str) -> str:
    """What people type for a room (``#Dev``) as its name (``dev``)."""
    return text.strip().lstrip("#").lower()


def add_session_args(parser: argparse.ArgumentParser, name_help: str) -> None:
    """--name, --room, --timeout: shared by the front ends that chat (console and window)."""
    parser.add_argument("--name", help=name_help)
    parser.add_argument(
        "--room",
        action="append",
        type=room_name,
        metavar="ROOM",
        help=f"room to join at start; repeat for more (default: {m.DEFAULT_ROOM})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the broker at start (default: %(default)s)",
    )
