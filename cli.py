"""`cityledger`: the operator's command line.

Every command has --help, prints readable text (or JSON with --json), and on failure
exits non-zero with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_RPC = "http://127.0.0.1:26701/rpc"


class CliError(Exception):
    """A failure the operator can act on: printed as one line, exit code 1."""


def _emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    if getattr(args, "json", False) or text is None:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


# -- keys ---------------------------------------------------------------------------------
def cmd_keys_new(args: argparse.Namespace) -> None:
    from ledger.crypto import KeyPair
    from ledger.errors import CryptoError

    key = KeyPair.generate()
    try:
        key.save(Path(args.out))
    except CryptoError as exc:
        raise CliError(exc.reason) from exc
    data = {"file": args.out, "public_key": key.public_key.hex(), "address": key.address,
            "did": f"did:city:{key.address}"}
    _emit(args, data, f"wrote {args.out}\npublic key: {data['public_key']}\n"
                      f"address:    {data['address']}\ndid:        {data['did']}")


def cmd_keys_show(args: argparse.Namespace) -> None:
    from ledger.crypto import KeyPair
    from ledger.errors import CryptoError

    try:
        key = KeyPair.load(Path(args.file))
    except CryptoError as exc:
        raise CliError(exc.reason) from exc
    data = {"public_key": key.public_key.hex(), "address": key.address,
            "did": f"did:city:{key.address}"}
    _emit(args, data, f"public key: {data['public_key']}\naddress:    {data['address']}\n"
                      f"did:        {data['did']}")


# -- genesis / network ---------------------------------------------------------------------
def _init_network(out: Path, validators: int, **kwargs: Any) -> Any:
    from ledger.network_setup import init_network
    from p2p.tls import write_node_tls

    try:
        layout = init_network(out, validators, **kwargs)
    except (ValueError, FileExistsError) as exc:
        raise CliError(str(exc)) from exc
    from ledger.crypto import KeyPair

    for home in layout.homes:
        write_node_tls(KeyPair.load(home / "node_key.json"), home / "tls")
    return layout


def cmd_genesis_init(args: argparse.Namespace) -> None:
    layout = _init_network(
        Path(args.out), args.validators, chain_id=args.chain_id,
        p2p_base_port=args.p2p_base_port, rpc_base_port=args.rpc_base_port,
    )
    data = {"genesis": str(layout.genesis_path), "homes": [str(h) for h in layout.homes],
            "rpc_urls": layout.rpc_urls, "accounts": str(Path(args.out) / "accounts")}
    lines = [f"genesis: {layout.genesis_path}"] + [
        f"node home: {home}  rpc: {url}" for home, url in zip(layout.homes, layout.rpc_urls,
                                                               strict=True)
    ] + [f"agency account keys: {data['accounts']}"]
    _emit(args, data, "\n".join(lines))


def cmd_node_start(args: argparse.Namespace) -> None:
    import node

    code = node.main(Path(args.home), log_format=args.log_format, log_level=args.log_level)
    if code:
        sys.exit(code)


def _spawn_node(home: Path, log_format: str) -> subprocess.Popen[bytes]:
    log = open(home / "node.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "node", "start", "--home", str(home),
         "--log-format", log_format],
        stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent,
        start_new_session=True,
    )


def cmd_testnet_up(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    if args.fresh and out.exists():
        import shutil

        shutil.rmtree(out)
    if not (out / "genesis.json").exists():
        _init_network(out, args.nodes)
    homes = sorted(p for p in out.glob("node*") if (p / "config.json").exists())
    if len(homes) != args.nodes:
        raise CliError(f"{out} holds a {len(homes)}-node network; use --fresh or another --dir")
    procs = [_spawn_node(home, "json") for home in homes]
    with open(out / "genesis.json") as handle:
        genesis = json.load(handle)
    urls = [f"http://{v['rpc_address']}/rpc" for v in genesis["validators"]]
    print(f"CityLedger testnet: {args.nodes} validators, chain {genesis['chain_id']}")
    for validator, url, home in zip(genesis["validators"], urls, homes, strict=True):
        print(f"  {validator['name']:<16} RPC {url}   log {home / 'node.log'}")
    print(f"agency account keys in {out / 'accounts'}; try: cityledger status --rpc {urls[0]}")
    print("Ctrl-C stops every node.", flush=True)
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for proc, home in zip(procs, homes, strict=True):
                if proc.poll() is not None:
                    print(f"node in {home} exited with {proc.returncode}; see {home / 'node.log'}",
                          file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        print("all nodes stopped")


# -- RPC-backed commands -------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from rpc.client import SyncRpcClient

    return SyncRpcClient(args.rpc)


def _rpc_call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    from rpc.client import RpcClientError

    try:
        return _client(args).call(method, **params)
    except RpcClientError as exc:
        raise CliError(f"{method}: {exc}") from exc
    except OSError as exc:
        raise CliError(f"cannot reach {args.rpc}: {exc}") from exc


def cmd_status(args: argparse.Namespace) -> None:
    status = _rpc_call(args, "node_status")
    text = "\n".join(f"{key}: {value}" for key, value in sorted(status.items()))
    _emit(args, status, text)


def cmd_verify_chain(args: argparse.Namespace) -> None:
    import node

    report = node.verify_home_chain(Path(args.home))
    data = {"ok": report.ok, "blocks_checked": report.blocks_checked,
            "first_bad_height": report.first_bad_height, "reason": report.reason}
    if report.ok:
        _emit(args, data, f"chain ok: {report.blocks_checked} blocks verified")
    else:
        _emit(args, data, f"chain BROKEN at height {report.first_bad_height}: {report.reason}")
        sys.exit(2)


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityledger", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, handler: Callable[[argparse.Namespace], None],
            help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                         description=help_text)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print machine-readable JSON")
        sub.set_defaults(handler=handler)
        return sub

    def add_rpc(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--rpc", default=os.environ.get("CITYLEDGER_RPC", DEFAULT_RPC),
                         help=f"node JSON-RPC URL (default $CITYLEDGER_RPC or {DEFAULT_RPC})")

    keys = commands.add_parser("keys", help="create and inspect Ed25519 key files")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    sub = add(keys_sub, "new", cmd_keys_new, "generate a key file (mode 0600)")
    sub.add_argument("--out", required=True, help="path of the new key file")
    sub = add(keys_sub, "show", cmd_keys_show, "print a key file's public key, address and DID")
    sub.add_argument("file", help="key file")

    genesis = commands.add_parser("genesis", help="create a network")
    genesis_sub = genesis.add_subparsers(dest="genesis_command", required=True, metavar="ACTION")
    sub = add(genesis_sub, "init", cmd_genesis_init,
              "write genesis.json, per-node home dirs and agency account keys")
    sub.add_argument("--validators", type=int, default=4, help="number of validators")
    sub.add_argument("--out", required=True, help="empty output directory")
    sub.add_argument("--chain-id", default="cityledger-local")
    sub.add_argument("--p2p-base-port", type=int, default=26601)
    sub.add_argument("--rpc-base-port", type=int, default=26701)

    node_cmd = commands.add_parser("node", help="run a validator node")
    node_sub = node_cmd.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    sub = add(node_sub, "start", cmd_node_start, "start the node in HOME (runs until SIGTERM)")
    sub.add_argument("--home", required=True)
    sub.add_argument("--log-format", choices=("text", "json"), default="text")
    sub.add_argument("--log-level", default="INFO")

    testnet = commands.add_parser("testnet", help="a local multi-node network")
    testnet_sub = testnet.add_subparsers(dest="testnet_command", required=True, metavar="ACTION")
    sub = add(testnet_sub, "up", cmd_testnet_up,
              "start N validator processes on loopback; Ctrl-C stops them all")
    sub.add_argument("--nodes", type=int, default=4)
    sub.add_argument("--dir", default="testnet", help="network directory (created if missing)")
    sub.add_argument("--fresh", action="store_true", help="delete DIR first")

    sub = add(commands, "status", cmd_status, "show a node's status")
    add_rpc(sub)

    sub = add(commands, "verify-chain", cmd_verify_chain,
              "re-check hash links, Merkle roots and commit certificates of a node's store")
    sub.add_argument("--home", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except CliError as exc:
        print(f"cityledger: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
