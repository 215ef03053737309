"""``rexec ping TARGET`` and ``rexec discover [TARGETS...]``: rexec servers over UDP.

``rexec.discovery.pinger`` does the probing; this module turns TARGET into PingTargets (an
address, an inventory host, or a pattern, as every command takes them; discover takes
networks too), prints what comes back as ping (one host) or fping -c (many) would, and exits
0 when every host answered, 1 when one did not, 3 when a name did not resolve, 2 for usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rexec.cli.common import EXIT_USAGE, ClientConfig, Command, TokenFile, fail

if TYPE_CHECKING:
    from rexec.discovery.pinger import Discovery, HostResult, PingTarget, ProbeOutcome, Server

EXIT_NO_REPLY = 1
EXIT_UNRESOLVED = 3
FLEET_COUNT = 3  # -c for a pattern, when not given
MAX_NETWORK = 65_536  # addresses in the largest network discover probes

InventoryFiles = Annotated[list[Path] | None, typer.Option(
    "--inventory", metavar="FILE",
    help="Inventory file (TOML); repeat it to extend one with the next.")]
ProbeIdentity = Annotated[str | None, typer.Option(
    "--identity", metavar="NAME",
    help="With a token: authenticate probes as this identity.  [default: default]")]
Rate = Annotated[float, typer.Option(
    "--rate", metavar="N", min=1, max=100_000,
    help="At most N probes a second, to all hosts together.")]
Json = Annotated[bool, typer.Option("--json", help="JSON Lines: one object a host.")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Only the header and the statistics (one host); no notes on"
                          " stderr (many hosts).")]

PING_HELP = """Probe rexec servers over UDP and say how long each took to answer, as ping.

TARGET is HOST:PORT, [IPV6]:PORT, HOST (port 7878), an inventory host (one host: a line a
probe, then the statistics; without -c until Ctrl-C), or a node-set pattern (web[01-20],
@group: every host probed in parallel, -c 3 unless given, one summary line a host, as
fping -c). The server answers on UDP on its TCP port. With a token (--token-file,
REXEC_TOKEN, the client config or ~/.rexec/token) the probes are authenticated, and the
replies carry the server's name and version; auth=no says a reply was not.

\b
Exit status:
  0  every host answered (at least once)
  1  some host did not answer
  2  bad usage (an option, a pattern, an inventory)
  3  a host name did not resolve (before 1)
"""

DISCOVER_HELP = """List the rexec servers that answer UDP probes.

TARGETS are addresses, host names, inventory hosts, node-set patterns, or networks such as
127.0.0.0/28 (at most 65,536 addresses); --broadcast ADDRESS probes a broadcast address as
well. Nothing is probed unless named: give TARGETS, --broadcast, or both. Each target is
probed again for loss within --timeout, until it answers. With a token, servers are asked
once more with an authenticated probe, for their name and version.

\b
Exit status:
  0  at least one server answered
  1  none did
  2  bad usage (no target, a network too large, a bad address)
"""


def ping(  # noqa: PLR0917 - typer maps parameters to arguments and options
    target: Annotated[str, typer.Argument(
        metavar="TARGET", show_default=False,
        help="HOST:PORT, [IPV6]:PORT, HOST (port 7878), an inventory host, or a node-set"
             " pattern (web[01-20], @group).")],
    count: Annotated[int | None, typer.Option(
        "--count", "-c", metavar="COUNT", min=1, max=1_000_000, show_default=False,
        help="Send COUNT probes to each host.  [default: until Ctrl-C for one host, 3 for a"
             " pattern]")] = None,
    interval: Annotated[float, typer.Option(
        "--interval", "-i", metavar="SECONDS", min=0.01, max=3600,
        help="Seconds between two probes to a host.")] = 1.0,
    timeout: Annotated[float, typer.Option(
        "--timeout", "-W", metavar="SECONDS", min=0.01, max=60,
        help="Seconds each probe waits for its reply.")] = 1.0,
    rate: Rate = 1000.0,
    as_json: Json = False,
    quiet: Quiet = False,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    identity: ProbeIdentity = None,
    inventory: InventoryFiles = None,
) -> None:
    connection = {"token_file": token_file, "config": config, "identity": identity}
    kind, found = _classify(target, inventory, config, connection)
    if kind == "fleet":
        targets = [_ping_target(t.name, t.options) for t in found]
        results = _ping(targets, count or FLEET_COUNT, interval, timeout, rate=rate)
        _fleet_report(results, as_json, quiet)
    else:
        one = _ping_target(found.name, found.options) if kind == "host" else _address(
            target, connection)
        report = OneHost(one, timeout, header=not as_json, lines=not (quiet or as_json))
        results = _ping([one], count, interval, timeout, rate=rate, report=report)
        if as_json:
            print(json.dumps(host_json(results[0])), flush=True)
        else:
            report.statistics(results[0])
    raise typer.Exit(ping_status(results))


def _classify(target: str, inventory: list[Path] | None, config: Path | None,
              connection: dict[str, Any]) -> tuple[str, Any]:
    """("address", None), ("host", Target) or ("fleet", [Target...]); exit 2 if bad."""
    from rexec.cli.fleet import classify
    from rexec.errors import ConfigError

    try:
        return classify(target, inventory, config, connection, token_required=False)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)


def _address(target: str, connection: dict[str, Any]) -> PingTarget:
    """One address's PingTarget, its token and identity resolved as ``rexec run`` does
    (without a token: unauthenticated probes); exit 2 for a bad address or token file."""
    from rexec.client.options import ConnectOptions
    from rexec.errors import ConfigError

    try:
        options = ConnectOptions.resolve(target, token_required=False, **connection)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    return _ping_target(target, options)


def _ping_target(name: str, options: Any) -> PingTarget:
    from rexec.discovery.pinger import PingTarget

    return PingTarget(name, options.host, options.port, options.token, options.identity)


def _ping(targets: list[PingTarget], count: int | None, interval: float, timeout: float, *,
          rate: float, report: OneHost | None = None) -> list[HostResult]:
    """Ping on a new event loop; Ctrl-C stops it, and what it had is returned."""
    import asyncio
    import signal

    from rexec.discovery.pinger import Pinger

    async def main() -> list[HostResult]:
        loop = asyncio.get_running_loop()
        async with Pinger(rate=rate) as pinger:
            loop.add_signal_handler(signal.SIGINT, pinger.stop)
            try:
                return await pinger.ping(
                    targets, count=count, interval=interval, timeout=timeout,
                    on_resolved=None if report is None else report.header,
                    on_probe=None if report is None else report.probe)
            finally:
                loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except ExceptionGroup as group:  # a callback's exit (stdout closed) from inside the loop
        found: BaseException | None = group.subgroup(typer.Exit)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if found is None:
            raise
        raise found from None


def ping_status(results: list[HostResult]) -> int:
    """3 if a name did not resolve, else 1 if a host never answered, else 0."""
    if any(result.unresolved for result in results):
        return EXIT_UNRESOLVED
    if any(result.received == 0 for result in results):
        return EXIT_NO_REPLY
    return 0


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _where(result: HostResult) -> str:
    from rexec.wire.address import format_address

    return format_address(result.address or result.target.host, result.target.port)


def _named(result: HostResult) -> str:
    """``web01 (127.0.0.2:7878)``, or the address alone when it is the name."""
    where = _where(result)
    return where if result.target.name == where else f"{result.target.name} ({where})"


def _percent(value: float) -> str:
    return f"{value:.0f}%" if value == int(value) else f"{value:.1f}%"


def _ms(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class OneHost:
    """One host's output, as ping's: a header, a line a probe (``lines``), the statistics."""

    def __init__(self, target: PingTarget, timeout: float, *, header: bool,
                 lines: bool) -> None:
        self.target, self.timeout = target, timeout
        self.show_header, self.lines = header, lines

    def header(self, result: HostResult) -> None:
        """Once the address is known."""
        from rexec.discovery.datagrams import PROBE_SIZE

        if not self.show_header:
            return
        who = (f"identity {self.target.probe_identity!r}" if self.target.token is not None
               else "no token: unauthenticated")
        _say(f"PING {_named(result)}: {PROBE_SIZE}-byte UDP probes, {who}")

    def probe(self, outcome: ProbeOutcome) -> None:
        """One counted probe ended."""
        if not self.lines:
            return
        where = _where(outcome.host)
        if outcome.reply is None:
            why = outcome.error or f"timed out after {float(self.timeout)!r} s"
            _say(f"no reply from {where}: seq={outcome.seq} ({why})")
            return
        reply = outcome.reply
        line = (f"reply from {where}: seq={outcome.seq} time={outcome.rtt:.3f} ms"
                f" protocol={reply.protocol} tls={_yes(reply.tls)}"
                f" auth={_yes(outcome.authenticated)}")
        if outcome.forged:
            line += " (it claimed auth=yes but its server proof failed: not authenticated)"
        _say(line)

    def statistics(self, result: HostResult) -> None:
        """The end: counts, loss and round-trip times (or why nothing was sent)."""
        if result.unresolved:
            print(f"rexec: {result.error}", file=sys.stderr, flush=True)
            return
        probes = "probe" if result.sent == 1 else "probes"
        lines = ["", f"--- {self.target.name} rexec ping statistics ---",
                 f"{result.sent} {probes} sent, {result.received} received,"
                 f" {_percent(result.loss)} loss"]
        if result.received:
            lines.append(f"rtt min/avg/max = {_ms(result.rtt_min)}/{_ms(result.rtt_avg)}/"
                         f"{_ms(result.rtt_max)} ms")
        if result.forged:
            lines.append(f"{result.forged} replies failed their server proof: not"
                         " authenticated")
        _say("\n".join(lines))


def _say(text: str, skip: bool = False) -> None:
    if skip:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise typer.Exit(141) from None


def _fleet_report(results: list[HostResult], as_json: bool, quiet: bool) -> None:
    """One line a host, in target order (fping -c's summary), then who did not answer."""
    if as_json:
        _say("\n".join(json.dumps(host_json(result)) for result in results))
    else:
        width = max(len(_named(r) if r.address else r.target.name) for r in results)
        _say("\n".join(fleet_line(result, width) for result in results))
    silent = [r.target.name for r in results if r.received == 0 and not r.unresolved]
    unresolved = [r.target.name for r in results if r.unresolved]
    if quiet:
        return
    if unresolved:
        print(f"rexec: {len(unresolved)} of {len(results)} host names did not resolve:"
              f" {', '.join(unresolved)}", file=sys.stderr)
    if silent:
        print(f"rexec: {len(silent)} of {len(results)} hosts did not answer:"
              f" {', '.join(silent)}", file=sys.stderr, flush=True)


def fleet_line(result: HostResult, width: int = 0) -> str:
    """``web01 (127.0.0.2:7878) : xmt/rcv/%loss = 3/3/0%, min/avg/max = ... ms, auth=yes``."""
    if result.unresolved:
        return f"{result.target.name.ljust(width)} : {result.error}"
    line = (f"{_named(result).ljust(width)} : xmt/rcv/%loss = {result.sent}/{result.received}/"
            f"{_percent(result.loss)}")
    if not result.received:
        return line + ", no reply" + (f" ({result.error})" if result.error else "")
    line += (f", min/avg/max = {_ms(result.rtt_min, 2)}/{_ms(result.rtt_avg, 2)}/"
             f"{_ms(result.rtt_max, 2)} ms, auth={_yes(result.authenticated)}")
    if result.forged:
        line += f" ({result.forged} replies failed their server proof)"
    return line


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def host_json(result: HostResult) -> dict[str, Any]:
    """One host's ``--json`` object."""
    reply = result.reply
    return {
        "host": result.target.name, "address": result.address, "port": result.target.port,
        "sent": result.sent, "received": result.received, "loss": round(result.loss, 3),
        "rtt_min": _round(result.rtt_min), "rtt_avg": _round(result.rtt_avg),
        "rtt_max": _round(result.rtt_max), "authenticated": result.authenticated,
        "protocol": None if reply is None else reply.protocol,
        "tls": None if reply is None else reply.tls,
        "name": None if reply is None else reply.name,
        "version": None if reply is None else reply.version,
        "forged": result.forged, "error": result.error,
    }


# -- discover ----------------------------------------------------------------------------------


def discover(  # noqa: PLR0917 - typer maps parameters to arguments and options
    targets: Annotated[list[str] | None, typer.Argument(
        metavar="TARGETS", show_default=False,
        help="Addresses, host names, inventory hosts, patterns, or networks (10.0.0.0/24).")
    ] = None,
    broadcast: Annotated[str | None, typer.Option(
        "--broadcast", metavar="ADDRESS", show_default=False,
        help="Also probe this IPv4 broadcast address (ADDRESS or ADDRESS:PORT).")] = None,
    port: Annotated[int, typer.Option(
        "--port", metavar="PORT", min=1, max=65535,
        help="The port of the targets and broadcast address that give none.")] = 7878,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", min=0.05, max=60,
        help="Seconds to wait for answers, probing again for loss (3 rounds).")] = 2.0,
    rate: Rate = 1000.0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="JSON Lines: one object a server.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No notes on stderr, only the servers found.")] = False,
    token_file: TokenFile = None,
    config: ClientConfig = None,
    identity: ProbeIdentity = None,
    inventory: InventoryFiles = None,
) -> None:
    if not targets and broadcast is None:
        fail("give the TARGETS to probe (addresses, names, patterns, networks such as"
             " 10.0.0.0/24), or --broadcast ADDRESS: discover never broadcasts unasked",
             EXIT_USAGE)
    connection = {"token_file": token_file, "config": config, "identity": identity}
    unicast = discover_targets(targets or [], port, inventory, config, connection)
    cast = [] if broadcast is None else [_with_port(broadcast, port, connection,
                                                    f"broadcast {broadcast}")]
    found = _discover(unicast, cast, timeout, rate)
    servers = sorted(found.servers, key=_server_order)
    if as_json:
        _say("\n".join(json.dumps(server_json(server)) for server in servers), not servers)
    elif servers:
        _say(server_table(servers).rstrip("\n"))
    if not quiet:
        for name, error in found.errors.items():
            print(f"rexec: {name}: {error}", file=sys.stderr)
        print(f"rexec: {len(servers)} server{'' if len(servers) == 1 else 's'} answered"
              f" ({found.probed} address{'' if found.probed == 1 else 'es'} probed)",
              file=sys.stderr, flush=True)
    raise typer.Exit(0 if servers else EXIT_NO_REPLY)


def discover_targets(items: list[str], port: int, inventory: list[Path] | None,
                     config: Path | None, connection: dict[str, Any]) -> list[PingTarget]:
    """Every address TARGETS name, each once: networks expanded, patterns resolved."""
    from rexec.discovery.pinger import PingTarget

    found: dict[tuple[str, int], PingTarget] = {}
    for item in items:
        if "/" in item:
            base = _with_port("localhost", port, connection, item)
            for address in network_addresses(item):
                found.setdefault((address, port), PingTarget(
                    address, address, port, base.token, base.identity))
            continue
        kind, resolved = _classify(item, inventory, config, connection)
        if kind == "address":
            hosts = [_with_port(item, port, connection, item)]
        elif kind == "host":
            hosts = [_ping_target(resolved.name, resolved.options)]
        else:
            hosts = [_ping_target(t.name, t.options) for t in resolved]
        for host in hosts:
            found.setdefault((host.host, host.port), host)
    return list(found.values())


def network_addresses(text: str) -> list[str]:
    """The host addresses of a network (all of a /31, /32, /127 or /128); exit 2 if it is
    not one or has more than MAX_NETWORK addresses."""
    import ipaddress

    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        fail(f"{text}: not a network ({exc})", EXIT_USAGE)
    if network.num_addresses > MAX_NETWORK:
        fail(f"{text}: {network.num_addresses:,} addresses, more than discover probes"
             f" ({MAX_NETWORK:,}, a /16 of IPv4): give a smaller network", EXIT_USAGE)
    return [str(address) for address in network.hosts()]


def _with_port(address: str, port: int, connection: dict[str, Any], name: str) -> PingTarget:
    """An address (default port ``port``) with the token and identity of the flags."""
    from rexec.client.options import ConnectOptions
    from rexec.discovery.pinger import PingTarget
    from rexec.errors import ConfigError
    from rexec.wire.address import parse_address

    try:
        host, parsed_port = parse_address(address, port)
        options = ConnectOptions.resolve(address, token_required=False, **connection)
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    return PingTarget(name, host, parsed_port, options.token, options.identity)


def _discover(unicast: list[PingTarget], cast: list[PingTarget], timeout: float,
              rate: float) -> Discovery:
    import asyncio

    from rexec.discovery.pinger import Pinger

    async def main() -> Discovery:
        async with Pinger(rate=rate) as pinger:
            return await pinger.discover(unicast, cast, timeout=timeout)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _server_order(server: Server) -> tuple[Any, ...]:
    import ipaddress

    try:
        ip = ipaddress.ip_address(server.address)
    except ValueError:
        return (2, 0, server.address, server.port)
    return (ip.version, int(ip), "", server.port)


def server_table(servers: list[Server]) -> str:
    """The servers as aligned columns; version and name only from an authenticated reply."""
    from rexec.cli.output import aligned

    rows = [("ADDRESS", "PORT", "TLS", "PROTOCOL", "AUTH", "VERSION", "NAME")]
    for s in servers:
        auth = "forged" if s.forged else _yes(s.authenticated)
        rows.append((s.address, str(s.reply.port), _yes(s.reply.tls), str(s.reply.protocol),
                     auth, s.reply.version or "", s.reply.name or ""))
    return aligned(rows, right=(1, 3))


def server_json(server: Server) -> dict[str, Any]:
    """One server's ``--json`` object."""
    reply = server.reply
    return {
        "address": server.address, "port": reply.port, "udp_port": server.port,
        "target": server.target, "tls": reply.tls, "protocol": reply.protocol,
        "authenticated": server.authenticated, "forged": server.forged,
        "name": reply.name, "version": reply.version, "uptime": reply.uptime,
        "running": reply.running, "load": None if reply.load is None else list(reply.load),
        "rtt": round(server.rtt, 3),
    }


def register(root: typer.Typer) -> None:
    """Add ``rexec ping`` and ``rexec discover`` to the root app."""
    root.command("ping", cls=Command, help=PING_HELP)(ping)
    root.command("discover", cls=Command, help=DISCOVER_HELP)(discover)
