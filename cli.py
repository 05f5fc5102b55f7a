"""`cityledger`: the operator's command line.

Every command has --help, prints readable text (or JSON with --json), and on failure
exits non-zero with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
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


def cmd_node_init(args: argparse.Namespace) -> None:
    """A home for a node joining an existing network (a new agency's validator-to-be)."""
    from ledger.crypto import KeyPair
    from ledger.epochs import EpochError, parse_validator_set
    from ledger.errors import CryptoError
    from ledger.genesis import GenesisError, load_genesis
    from p2p.tls import write_node_tls

    home = Path(args.home)
    if (home / "node_key.json").exists() or (home / "config.json").exists():
        raise CliError(f"{home} already holds a node; choose an empty directory")
    try:
        genesis = load_genesis(Path(args.genesis))
    except GenesisError as exc:
        raise CliError(f"{args.genesis}: {exc.reason}") from exc
    key = KeyPair.generate()
    entry = {"name": args.name, "public_key": key.public_key.hex(),
             "p2p_address": args.p2p, "rpc_address": args.rpc}
    try:  # the entry governance will be asked to approve must be a valid one
        parse_validator_set([entry])
    except EpochError as exc:
        raise CliError(exc.reason) from exc
    taken = {v.name for v in genesis.validators} | {v.public_key for v in genesis.validators}
    if args.name in taken:
        raise CliError(f"validator name {args.name!r} is already in genesis")
    home.mkdir(parents=True, exist_ok=True)
    try:
        key.save(home / "node_key.json")
    except CryptoError as exc:
        raise CliError(exc.reason) from exc
    write_node_tls(key, home / "tls")
    (home / "genesis.json").write_text(Path(args.genesis).read_text())
    config = {"node_name": args.name, "p2p_listen": args.p2p, "rpc_listen": args.rpc}
    (home / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _emit(args, {"home": str(home), "validator_entry": entry},
          f"node home: {home}\nits entry for a governance set_validators proposal:\n"
          f"{json.dumps(entry)}")


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
def _rpc_call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    from rpc.client import RpcClientError, SyncRpcClient

    client = SyncRpcClient(args.rpc)
    try:
        return client.call(method, **params)
    except RpcClientError as exc:
        raise CliError(f"{method}: {exc}") from exc
    except OSError as exc:
        raise CliError(f"cannot reach {args.rpc}: {exc}") from exc
    finally:
        client.close()


def cmd_status(args: argparse.Namespace) -> None:
    status = _rpc_call(args, "node_status")
    text = "\n".join(f"{key}: {value}" for key, value in sorted(status.items()))
    _emit(args, status, text)


def cmd_verify_chain(args: argparse.Namespace) -> None:
    import node
    from ledger.errors import LedgerError

    if not (Path(args.home) / "data" / "ledger.db").is_dir():
        raise CliError(f"no ledger store in {Path(args.home) / 'data'}; is --home a node home?")
    try:
        report = node.verify_home_chain(Path(args.home))
    except LedgerError as exc:
        raise CliError(f"{exc} (a running node locks its store: stop it or verify a copy)"
                       if "lock" in str(exc).lower() else str(exc)) from exc
    data = {"ok": report.ok, "blocks_checked": report.blocks_checked,
            "first_bad_height": report.first_bad_height, "reason": report.reason}
    if report.ok:
        _emit(args, data, f"chain ok: {report.blocks_checked} blocks verified")
    else:
        _emit(args, data, f"chain BROKEN at height {report.first_bad_height}: {report.reason}")
        sys.exit(2)


# -- transactions ---------------------------------------------------------------------------
EXIT_REJECTED = 3  # committed, but the family's rules refused it (receipt code and reason)
_INT_TEXT = re.compile(r"^-?[0-9]+$")


def _field_types(annotation: Any) -> set[type]:
    """The plain types a pydantic field accepts (unwrapping Annotated, Optional, unions)."""
    if isinstance(annotation, type):
        return {annotation}
    found: set[type] = set()
    for arg in typing.get_args(annotation):
        found |= _field_types(arg)
    return found


def _convert(text: str, types: set[type] | None) -> Any:
    """A command-line value as the type its field takes (ints parsed; see `tx --help`)."""
    if types is None:  # no schema known: integers become ints, everything else stays text
        return int(text) if _INT_TEXT.match(text) else text
    if str in types and not types & {int, bool}:
        return text
    if types & {int, bool} and str not in types:
        if bool in types and text in ("true", "false"):
            return text == "true"
        if int in types and _INT_TEXT.match(text):
            return int(text)
        if type(None) in types and text in ("null", "none"):
            return None
        raise CliError(f"{text!r} is not a{'n integer' if int in types else ' boolean'}")
    try:  # mixed scalar (a credential value): JSON true/1/"1" keep their type, else text
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | str) else text


def _operation_schema(family: str, op: str) -> type[Any] | None:
    """The payload model of FAMILY OP from the installed rule modules, if installed here."""
    from txtypes.base import available_modules

    entry = available_modules().get(family)
    if entry is None:
        return None
    operations = getattr(entry.load(), "operations", {})
    model = operations.get(op)
    if model is None:
        known = ", ".join(sorted(operations))
        raise CliError(f"family {family!r} has no operation {op!r} (operations: {known})")
    return typing.cast(type[Any], model)


def _family_operations() -> dict[str, list[str]]:
    from txtypes.base import available_modules

    found: dict[str, list[str]] = {}
    for name, entry in sorted(available_modules().items()):
        try:
            found[name] = sorted(getattr(entry.load(), "operations", {}))
        except (ImportError, AttributeError):
            continue  # a broken third-party module must not break --help
    return found


def _build_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if args.payload is not None:
        text = args.payload
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text()
            except OSError as exc:
                raise CliError(f"cannot read payload file {text[1:]}: {exc.strerror}") from exc
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise CliError(f"--payload is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CliError("--payload must be a JSON object")
        payload.update(loaded)
    schema = _operation_schema(args.family, args.op)
    fields = getattr(schema, "model_fields", {}) if schema is not None else {}
    for item in args.arg or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise CliError(f"--arg {item!r}: expected NAME=VALUE or NAME:=JSON")
        if name.endswith(":"):
            name = name[:-1]
            try:
                payload[name] = json.loads(text)
            except ValueError as exc:
                raise CliError(f"--arg {name}:= needs a JSON value: {exc}") from exc
            continue
        field = fields.get(name)
        types = _field_types(field.annotation) if field is not None else None
        try:
            payload[name] = _convert(text, types)
        except CliError as exc:
            raise CliError(f"--arg {name}: {exc}") from exc
    return payload


def _load_key(path: str) -> Any:
    from ledger.crypto import KeyPair
    from ledger.errors import CryptoError

    try:
        return KeyPair.load(Path(path))
    except CryptoError as exc:
        raise CliError(exc.reason) from exc


def _tx_outcome(args: argparse.Namespace, result: Any, what: str) -> None:
    """Print a tx_submit/tx_get result; a rule rejection exits EXIT_REJECTED."""
    receipt = result.get("receipt") if isinstance(result, dict) else None
    if receipt is None:
        _emit(args, result, f"{what}: {result.get('status')} (tx {result.get('hash')})")
        return
    where = f"height {result['height']} (tx {result['hash']})"
    if receipt["status"] == "ok":
        _emit(args, result, f"{what}: committed at {where}\n"
                            f"result: {json.dumps(receipt['result'], sort_keys=True)}")
        return
    if getattr(args, "json", False):
        _emit(args, result)
    print(f"cityledger: error: {what} rejected at {where}: {receipt['code']}: "
          f"{receipt['reason']}", file=sys.stderr)
    sys.exit(EXIT_REJECTED)


def cmd_tx(args: argparse.Namespace) -> None:
    from rpc.client import RpcClientError, SyncLedgerClient

    payload = _build_payload(args)
    key = _load_key(args.key)
    client = SyncLedgerClient(args.rpc, key)
    try:
        result = client.submit(args.family, args.op, payload, wait=args.wait)
    except RpcClientError as exc:
        detail = f" [{exc.data['code']}]" if isinstance(exc.data, dict) and "code" in exc.data \
            else ""
        raise CliError(f"{args.family} {args.op}: {exc}{detail}") from exc
    finally:
        client.close()
    _tx_outcome(args, result, f"{args.family} {args.op}")


# -- queries --------------------------------------------------------------------------------
def _block_text(block: dict[str, Any]) -> str:
    if block.get("genesis"):
        return f"height 0 (genesis) hash {block['hash']}"
    header = block["header"]
    cert = block["certificate"]
    lines = [f"height {block['height']}  hash {block['hash']}",
             f"prev   {header['prev_hash']}",
             f"time   {header['timestamp_ms']} ms  view {header['view']}  "
             f"proposer {header['proposer'][:16]}…",
             f"state root {header['state_root']}",
             f"txs ({len(block['tx_hashes'])}):"] + [f"  {h}" for h in block["tx_hashes"]]
    if cert is not None:
        lines.append(f"commit certificate: seq {cert['seq']} view {cert['view']}, "
                     f"{len(cert['signatures'])} validator signatures")
    return "\n".join(lines)


def _hash_arg(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise CliError(f"{text!r} is not a hash (64 hex characters)")
    return text.lower()


def cmd_query_block(args: argparse.Namespace) -> None:
    if args.hash is not None:
        if args.which != "latest":
            raise CliError("give a HEIGHT or --hash, not both")
        block = _rpc_call(args, "block_get", hash=_hash_arg(args.hash))
    elif args.which == "latest":
        block = _rpc_call(args, "block_latest")
    elif _INT_TEXT.match(args.which) and int(args.which) >= 0:
        block = _rpc_call(args, "block_get", height=int(args.which))
    else:
        raise CliError(f"{args.which!r} is not a height, 'latest' or --hash HASH")
    _emit(args, block, _block_text(block))


def cmd_query_tx(args: argparse.Namespace) -> None:
    result = _rpc_call(args, "tx_get", hash=_hash_arg(args.hash))
    receipt = result.get("receipt")
    if receipt is None:
        _emit(args, result, f"tx {result['hash']}: {result['status']}")
        return
    text = (f"tx {result['hash']}: {result['status']} at height {result['height']} "
            f"index {result['index']}\nreceipt: {receipt['code']}"
            + (f": {receipt['reason']}" if receipt["reason"] else "")
            + f"\nresult: {json.dumps(receipt['result'], sort_keys=True)}")
    _emit(args, result, text)


def _state_key(text: str, as_text: bool) -> bytes:
    if not as_text and re.fullmatch(r"(?:[0-9a-f]{2})+", text):
        return bytes.fromhex(text)
    return text.encode()


def cmd_query_state(args: argparse.Namespace) -> None:
    key = _state_key(args.key, args.text)
    result = _rpc_call(args, "state_get", key=key.hex())
    shown = key.decode(errors="backslashreplace")
    if result["value"] is None:
        text = f"{shown}: absent at height {result['height']} (state root {result['state_root']})"
    else:
        text = (f"{shown} at height {result['height']} (state root {result['state_root']}):\n"
                + json.dumps(result["decoded"], indent=2, sort_keys=True))
    _emit(args, result, text)


def cmd_query_family(args: argparse.Namespace) -> None:
    from txtypes.queries import FAMILY_QUERIES

    model = FAMILY_QUERIES[args.query_name][0]
    params: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        text = getattr(args, name)
        if text is None:
            continue
        try:
            params[name] = _convert(text, _field_types(field.annotation))
        except CliError as exc:
            raise CliError(f"{name}: {exc}") from exc
    result = _rpc_call(args, args.query_name, **params)
    _emit(args, result, json.dumps(result, indent=2, sort_keys=True))


def cmd_demo(args: argparse.Namespace) -> None:
    from rpc.demo import DemoError, city_day

    try:
        day = asyncio.run(city_day(args))
    except DemoError as exc:
        raise CliError(str(exc)) from exc
    if getattr(args, "json", False):
        _emit(args, {"ok": True, "run": day.tag, "steps": day.steps, "ids": day.ids})


def _tx_epilog() -> str:
    lines = ["operations of the installed rule modules (docs/FAMILIES.md has the payloads):"]
    lines += [f"  {family:<12} {' '.join(ops)}" for family, ops in _family_operations().items()]
    lines += ["", "values: --arg amount=5 sends an integer where the field takes one;",
              "        --arg categories:='[\"food\"]' sends JSON.",
              f"exit codes: 0 committed, 1 error (one line on stderr), {EXIT_REJECTED} committed "
              "but rejected by the rules (code: reason on stderr)."]
    return "\n".join(lines)


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
    sub = add(node_sub, "init", cmd_node_init,
              "make a home for a node joining an existing network (prints its validator entry)")
    sub.add_argument("--home", required=True, help="new node home directory")
    sub.add_argument("--genesis", required=True, help="the network's genesis.json")
    sub.add_argument("--name", required=True, help="agency name, e.g. health")
    sub.add_argument("--p2p", required=True, help="host:port other validators dial")
    sub.add_argument("--rpc", required=True, help="host:port of its JSON-RPC")
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

    sub = add(commands, "tx", cmd_tx, "sign a transaction with --key and submit it")
    sub.formatter_class = argparse.RawDescriptionHelpFormatter
    sub.add_argument("family", help="transaction family, e.g. tokens")
    sub.add_argument("op", help="operation of that family, e.g. spend")
    sub.add_argument("--key", required=True, metavar="FILE", help="signer's key file (mode 0600)")
    sub.add_argument("--payload", metavar="JSON", help="payload as a JSON object, or @FILE")
    sub.add_argument("--arg", action="append", metavar="NAME=VALUE",
                     help="one payload field (repeatable; overrides --payload); NAME:=JSON "
                          "for lists, objects, booleans")
    sub.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="wait for the commit and print the receipt (default); --no-wait "
                          "prints the hash at once")
    add_rpc(sub)
    sub.epilog = _tx_epilog()

    query = commands.add_parser("query", help="read blocks, transactions, state, family records")
    query_sub = query.add_subparsers(dest="query_command", required=True, metavar="WHAT")
    sub = add(query_sub, "block", cmd_query_block, "a block's header, txs and commit certificate")
    sub.add_argument("which", nargs="?", default="latest", metavar="HEIGHT|latest")
    sub.add_argument("--hash", help="the block hash (hex) instead of a height")
    add_rpc(sub)
    sub = add(query_sub, "tx", cmd_query_tx, "a transaction's status and receipt")
    sub.add_argument("hash", help="transaction hash (hex)")
    add_rpc(sub)
    sub = add(query_sub, "state", cmd_query_state,
              "one state entry, decoded, with its Merkle proof (--json)")
    sub.add_argument("key", help="state key as hex, or as text (e.g. tokens/class/social)")
    sub.add_argument("--text", action="store_true", help="take KEY as text even if it looks hex")
    add_rpc(sub)
    from txtypes.queries import FAMILY_QUERIES

    for name, (model, _query, doc) in FAMILY_QUERIES.items():
        sub = add(query_sub, name, cmd_query_family, doc)
        sub.set_defaults(query_name=name)
        for field_name, field in model.model_fields.items():
            if field.is_required():
                sub.add_argument(field_name, metavar=field_name.upper())
            else:
                sub.add_argument("--" + field_name.replace("_", "-"), dest=field_name,
                                 default=None, metavar=field_name.upper())
        add_rpc(sub)

    sub = add(commands, "demo", cmd_demo,
              "a scripted day in the city against a running network (identities, social "
              "tokens, merchants, an hourly-work contract, solar trading)")
    add_rpc(sub)
    sub.add_argument("--accounts", default="testnet/accounts", metavar="DIR",
                     help="agency account keys written by genesis init (default "
                          "testnet/accounts)")

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
    except BrokenPipeError:  # `cityledger ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
