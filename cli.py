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


# -- demo: a scripted day in the city ---------------------------------------------------------
DEMO_AGENCIES = ("treasury", "civil-registry", "utility", "social-services")
DEMO_ZONE = "riverside"
DEMO_WAIT_BLOCKS_MAX = 500
# Room for the time records before pay day, even on a network that makes blocks quickly.
DEMO_PAY_PERIOD_BLOCKS = 30
DEMO_ORDER_ATTEMPTS = 3
LOW_INCOME_SCHEMA = "low_income_eligibility"


class _CityDay:
    """Runs the demo's steps against a network, printing each with its committed height.

    Every actor signs with its own key through one shared RPC connection; a step whose
    receipt code is not the expected one stops the demo with a one-line reason.
    """

    def __init__(self, rpc: Any, chain_id: str, agencies: dict[str, Any], quiet: bool) -> None:
        self.rpc = rpc
        self.chain_id = chain_id
        self.agencies = agencies
        self.quiet = quiet
        self.steps: list[dict[str, Any]] = []
        self.ids: dict[str, Any] = {}  # what the day created, for querying it afterwards
        self._clients: dict[str, Any] = {}
        self.tag = os.urandom(3).hex()  # keeps ids unique when the demo runs again

    def say(self, height: int | None, text: str) -> None:
        self.steps.append({"height": height, "text": text})
        if not self.quiet:
            where = f"[block {height:>5}]" if height is not None else " " * 13
            print(f"{where} {text}", flush=True)

    def _client(self, key: Any) -> Any:
        from rpc.client import LedgerClient

        client = self._clients.get(key.address)
        if client is None:
            client = LedgerClient(self.rpc.url, key, self.chain_id, rpc=self.rpc)
            self._clients[key.address] = client
        return client

    async def send(self, title: str, key: Any, family: str, op: str, payload: dict[str, Any],
                   expect: str = "ok") -> tuple[int, dict[str, Any]]:
        """Submit and wait; (height, receipt) if the receipt code is `expect`, else fail."""
        from rpc.client import RpcClientError

        try:
            result = await self._client(key).submit(family, op, payload, wait=True)
        except RpcClientError as exc:
            raise CliError(f"demo step '{title}': {family} {op}: {exc}") from exc
        receipt = result["receipt"]
        if receipt["code"] != expect:
            raise CliError(f"demo step '{title}': expected {expect}, got {receipt['code']}: "
                           f"{receipt['reason']} (tx {result['hash']}, height {result['height']})")
        return int(result["height"]), receipt

    async def send_all(self, items: Sequence[tuple[str, Any, str, str, dict[str, Any]]]
                       ) -> list[tuple[int, dict[str, Any]]]:
        """Several independent transactions at once (different signers), in one go."""
        return list(await asyncio.gather(*(self.send(*item) for item in items)))

    async def query(self, method: str, **params: Any) -> Any:
        from rpc.client import RpcClientError

        try:
            return await self.rpc.call(method, **params)
        except RpcClientError as exc:
            raise CliError(f"demo: {method}: {exc}") from exc

    async def height(self) -> int:
        return int((await self.query("block_latest"))["height"])

    async def advance_to(self, target: int, why: str, payer: Any, payee: str,
                         class_id: str) -> None:
        """Let blocks pass until `target` is committed: blocks come only with
        transactions, so the rest of the city's traffic is simulated by small payments."""
        start = await self.height()
        if start >= target:
            return
        if target - start > DEMO_WAIT_BLOCKS_MAX:
            raise CliError(f"demo: {why} needs {target - start} more blocks; "
                           f"more than the {DEMO_WAIT_BLOCKS_MAX} it will wait")
        height = start
        while height < target:
            height, _ = await self.send("city traffic", payer, "tokens", "transfer",
                                        {"class_id": class_id, "to": payee, "amount": 1})
        self.say(height, f"... time passes to block {height} (other city traffic: small "
                         f"payments) while {why}")


def _load_agencies(accounts: Path) -> dict[str, Any]:
    from ledger.crypto import KeyPair
    from ledger.errors import CryptoError

    keys = {}
    for name in DEMO_AGENCIES:
        path = accounts / f"{name}.json"
        try:
            keys[name] = KeyPair.load(path)
        except CryptoError as exc:
            raise CliError(f"demo needs the {name} agency key from `genesis init` "
                           f"({exc.reason})") from exc
    return keys


async def _city_day(args: argparse.Namespace) -> _CityDay:
    from ledger.crypto import KeyPair
    from rpc.client import RpcClient, RpcClientError
    from txtypes.credentials import commit_attributes

    agencies = _load_agencies(Path(args.accounts))
    treasury, registry = agencies["treasury"], agencies["civil-registry"]
    utility, social = agencies["utility"], agencies["social-services"]
    async with RpcClient(args.rpc) as rpc:
        try:
            status = await rpc.call("node_status")
        except RpcClientError as exc:
            raise CliError(f"demo: cannot use the node at {args.rpc}: {exc}") from exc
        day = _CityDay(rpc, status["chain_id"], agencies, quiet=getattr(args, "json", False))
        tag = day.tag
        day.say(None, f"CityLedger demo on chain {status['chain_id']} via {status['node_name']} "
                      f"({len(status['validators'])} validators, height {status['height']}), "
                      f"run {tag}")
        people = {name: KeyPair.generate() for name in
                  ("amira", "ben", "dana", "erin", "farid", "grocer", "bar", "clock",
                   "meter_erin", "meter_farid", "commuter", "kiosk")}
        addr = {name: key.address for name, key in people.items()}
        day.ids["addresses"] = addr

        # -- morning: residents get identities; social services issues a credential ---------
        residents = ("amira", "ben", "dana", "erin", "farid")
        done = await day.send_all([(f"register {name}", people[name], "identity", "register", {})
                                   for name in residents])
        for name, (height, receipt) in zip(residents, done, strict=True):
            day.say(height, f"civil registry: {name.title()} registers with a new key as "
                            f"{receipt['result']['did']}")
        height = await day.height()
        attributes: dict[str, str | int | bool] = {"household_income_band": "under_30k",
                                                   "household_size": 3}
        commitments, salts = commit_attributes(attributes)
        credential_id = f"lowinc-{tag}-amira"
        h, _ = await day.send("issue credential", social, "identity", "issue_credential", {
            "credential_id": credential_id, "subject_did": f"did:city:{addr['amira']}",
            "schema_name": LOW_INCOME_SCHEMA, "commitments": commitments,
            "expiry_height": height + 100_000})
        day.say(h, f"social services: issues {LOW_INCOME_SCHEMA} credential {credential_id} "
                   "to Amira (only salted hashes of her data go on the ledger)")
        day.ids.update(credential_id=credential_id, disclosed={
            "attribute": "household_income_band", "value": "under_30k",
            "salt": salts["household_income_band"].hex()})
        check = await day.query("credential_verify", credential_id=credential_id,
                                attribute="household_income_band", value="under_30k",
                                salt=salts["household_income_band"].hex())
        if not check["valid"]:
            raise CliError(f"demo: Amira's disclosure did not verify: {check['reason']}")
        day.say(None, "a clerk checks Amira's disclosed income band against the ledger: "
                      f"valid={check['valid']} (household size stays private)")

        # -- social tokens: defined, issued to the eligible only ------------------------------
        social_class = f"social_{tag}"
        day.ids["social_class"] = social_class
        height = await day.height()
        h, _ = await day.send("define social token", treasury, "tokens", "define_class", {
            "class_id": social_class, "name": "Social welfare token", "budget": 50_000,
            "categories": ["food", "clothing"], "transferable": False,
            "expiry_height": height + 100_000, "redemption_cents_per_unit": 100,
            "eligibility_schema": LOW_INCOME_SCHEMA})
        day.say(h, f"treasury: defines {social_class} (food and clothing only, not "
                   f"transferable, 1 unit = 1.00, requires {LOW_INCOME_SCHEMA})")
        h, _ = await day.send("issue social tokens", treasury, "tokens", "issue", {
            "class_id": social_class, "to": addr["amira"], "amount": 300,
            "credential_id": credential_id})
        day.say(h, "treasury: issues 300 social tokens to Amira, citing her credential")
        h, receipt = await day.send("issue without credential", treasury, "tokens", "issue", {
            "class_id": social_class, "to": addr["ben"], "amount": 300}, expect="not_eligible")
        day.say(h, f"treasury: issuing to Ben (no credential) is refused: {receipt['code']}")

        # -- merchants, spending, redemption, settlement --------------------------------------
        h, _ = await day.send("register grocer", registry, "tokens", "register_merchant",
                              {"merchant": addr["grocer"], "name": "Green Grocer",
                               "category": "food"})
        day.say(h, "registrar: registers Green Grocer (category food)")
        h, _ = await day.send("register bar", registry, "tokens", "register_merchant",
                              {"merchant": addr["bar"], "name": "Harbour Bar", "category": "bar"})
        day.say(h, "registrar: registers Harbour Bar (category bar)")
        h, _ = await day.send("spend at grocer", people["amira"], "tokens", "spend", {
            "class_id": social_class, "merchant": addr["grocer"], "amount": 120,
            "memo": "vegetables, bread, milk"})
        day.say(h, "Amira buys groceries for 120 social tokens: accepted")
        h, receipt = await day.send("spend at bar", people["amira"], "tokens", "spend", {
            "class_id": social_class, "merchant": addr["bar"], "amount": 40},
            expect="category_not_allowed")
        day.say(h, f"Amira tries to pay 40 at Harbour Bar: refused: {receipt['code']}")
        h, receipt = await day.send("redeem", people["grocer"], "tokens", "redeem",
                                    {"class_id": social_class, "amount": 120})
        owed = receipt["result"]["owed_cents"]
        day.say(h, f"Green Grocer redeems 120 tokens; the treasury owes it {owed} cents")
        h, receipt = await day.send("settle", treasury, "tokens", "settle", {
            "merchant": addr["grocer"], "cents": owed, "reference": f"bank transfer {tag}-1"})
        day.say(h, f"treasury: records the bank transfer of {owed} cents; still owed "
                   f"{receipt['result']['owed_cents']}")
        supply = (await day.query("token_class_get", class_id=social_class))["supply"]
        day.say(None, f"{social_class} supply: issued {supply['issued']}, redeemed "
                      f"{supply['redeemed']}, outstanding {supply['outstanding']}")

        # -- city pay: a transferable token for wages and energy -----------------------------
        pay_class = f"citypay_{tag}"
        day.ids["pay_class"] = pay_class
        height = await day.height()
        h, _ = await day.send("define city pay", treasury, "tokens", "define_class", {
            "class_id": pay_class, "name": "City pay", "budget": 10_000_000,
            "categories": ["services"], "transferable": True,
            "expiry_height": height + 1_000_000, "redemption_cents_per_unit": 1})
        day.say(h, f"treasury: defines {pay_class} (transferable, for wages and energy)")
        done = await day.send_all([
            ("fund employer", treasury, "tokens", "issue",
             {"class_id": pay_class, "to": social.address, "amount": 5000}),
            ("fund buyer", treasury, "tokens", "issue",
             {"class_id": pay_class, "to": addr["farid"], "amount": 500}),
            ("fund traffic", treasury, "tokens", "issue",
             {"class_id": pay_class, "to": addr["commuter"], "amount": 1000}),
        ])
        day.say(max(h for h, _ in done), "treasury: pays 5000 city pay to social services' "
                                         "community centre, 500 to Farid")

        async def wait_until(target: int, why: str) -> None:
            await day.advance_to(target, why, people["commuter"], addr["kiosk"], pay_class)

        # -- hourly work: a part-time worker paid by recorded time ---------------------------
        height = await day.height()
        period_end = height + DEMO_PAY_PERIOD_BLOCKS
        h, receipt = await day.send("hourly contract", social, "contracts", "create", {
            "template": "hourly_work", "class_id": pay_class, "terms": {
                "worker": addr["dana"], "rate_per_hour": 20, "budget": 200,
                "period_end_height": period_end, "time_clock": addr["clock"]}})
        contract_id = receipt["result"]["contract_id"]
        day.ids["contract_id"] = contract_id
        day.say(h, f"community centre hires Dana: hourly_work contract {contract_id}, "
                   f"20/h, 200 escrowed, pay day at block {period_end}")
        h, _ = await day.send("clock records time", people["clock"], "contracts", "act", {
            "contract_id": contract_id, "action": "record_time", "args": {"minutes": 150}})
        day.say(h, "the centre's time clock records 150 minutes for Dana")
        h, _ = await day.send("employer records time", social, "contracts", "act", {
            "contract_id": contract_id, "action": "record_time",
            "args": {"minutes": 60, "note": "evening shift"}})
        day.say(h, "the employer records 60 more minutes (3.5 h in all)")
        await wait_until(period_end, f"Dana's pay period runs to block {period_end}")
        contract = await day.query("contract_get", contract_id=contract_id)
        paid = contract["data"]["paid_to_worker"]
        if contract["status"] != "closed" or paid != 70:
            raise CliError(f"demo: contract {contract_id} is {contract['status']} "
                           f"({contract['outcome']}), paid {paid}; expected closed and 70")
        balance = (await day.query("token_balance", class_id=pay_class,
                                   holder=addr["dana"]))["balance"]
        day.say(contract["closed_height"],
                f"pay day: the contract pays Dana {paid} (3.5 h x 20) automatically and "
                f"returns {contract['refunded']} to the employer; Dana holds {balance}")

        # -- energy: two households trade solar surplus ---------------------------------------
        for owner in ("erin", "farid"):  # one signer: its nonces go in order
            h, _ = await day.send("register meter", utility, "energy", "register_meter", {
                "meter_key": people[f"meter_{owner}"].public_key.hex(), "owner": addr[owner],
                "zone": DEMO_ZONE})
        day.say(h, f"utility: registers smart meters for Erin (solar) and Farid in zone "
                   f"{DEMO_ZONE}")
        market = await day.query("energy_market", zone=DEMO_ZONE)
        reading_interval = market["interval"]
        await wait_until(market["last_height"],
                         f"metering interval {reading_interval} ends at block "
                         f"{market['last_height']}")
        done = await day.send_all([
            ("erin reading", people["meter_erin"], "energy", "reading",
             {"interval": reading_interval, "produced_wh": 6400, "consumed_wh": 1400}),
            ("farid reading", people["meter_farid"], "energy", "reading",
             {"interval": reading_interval, "produced_wh": 300, "consumed_wh": 4300}),
        ])
        day.say(max(h for h, _ in done), f"meters sign their readings for interval "
                                         f"{reading_interval}: Erin's shows 5000 Wh surplus")
        for _attempt in range(DEMO_ORDER_ATTEMPTS):
            market = await day.query("energy_market", zone=DEMO_ZONE)
            if market["last_height"] - await day.height() < 3:  # both orders in one interval
                await wait_until(market["last_height"], "the next market interval starts")
                continue
            (h_offer, offer), (_, bid) = await day.send_all([
                ("offer", people["erin"], "energy", "offer",
                 {"meter_id": people["meter_erin"].address, "quantity_wh": 4000,
                  "price_per_kwh": 30, "class_id": pay_class}),
                ("bid", people["farid"], "energy", "bid",
                 {"meter_id": people["meter_farid"].address, "quantity_wh": 3000,
                  "price_per_kwh": 40, "class_id": pay_class}),
            ])
            interval = offer["result"]["interval"]
            if bid["result"]["interval"] == interval:
                break
            # Blocks came faster than expected: both orders expire unmatched at clearing
            # (surplus and locked funds return); try again in a later interval.
            later = max(interval, bid["result"]["interval"])
            last = (await day.query("energy_market", zone=DEMO_ZONE,
                                    interval=later))["last_height"]
            await wait_until(last, "the offer and the bid fell into different intervals; "
                                   "both expire and are placed again")
        else:
            raise CliError("demo: could not place the offer and the bid in one market interval")
        day.ids["market"] = {"zone": DEMO_ZONE, "interval": interval}
        day.say(h_offer, "Erin offers 4000 Wh at 30/kWh; Farid bids for 3000 Wh at 40/kWh "
                         f"(locks {bid['result']['locked']})")
        market = await day.query("energy_market", zone=DEMO_ZONE, interval=interval)
        await wait_until(market["last_height"],
                         f"the {DEMO_ZONE} market of interval {interval} clears at block "
                         f"{market['last_height']}")
        market = await day.query("energy_market", zone=DEMO_ZONE, interval=interval)
        cleared = next((m for m in market["markets"] if m["class_id"] == pay_class), None)
        if cleared is None or cleared["status"] != "cleared":
            raise CliError(f"demo: the {DEMO_ZONE} market of interval {interval} did not clear")
        earned = (await day.query("token_balance", class_id=pay_class,
                                  holder=addr["erin"]))["balance"]
        day.say(cleared["cleared_height"],
                f"market clears: {cleared['traded_wh']} Wh at {cleared['clearing_price_per_kwh']}"
                f"/kWh; Erin receives {earned}, Farid's unused lock returns, the unsold "
                "1000 Wh go back to Erin's surplus")
        day.say(await day.height(), "the city's day is on the ledger; every step above is in a "
                                    "committed block")
        day.say(None, f"look around: cityledger query token_class_get {social_class} "
                      f"--rpc {args.rpc}; cityledger query contract_get {contract_id} ...")
        return day


def cmd_demo(args: argparse.Namespace) -> None:
    day = asyncio.run(_city_day(args))
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
