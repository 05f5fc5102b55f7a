"""The `cityledger` command line without a running network: help, errors, JSON, payloads.

Commands that need a node are run against a closed port here (their network behaviour is
covered by tests/integration/test_demo.py against real node processes).
"""

from __future__ import annotations

import argparse
import json
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

import cli
from ledger.crypto import KeyPair
from txtypes.queries import FAMILY_QUERIES


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/rpc"


def every_command_path() -> list[list[str]]:
    """Every (sub)command of the parser, e.g. ['query', 'token_balance']."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(cli.build_parser(), [])
    return paths


COMMANDS = every_command_path()


def test_parser_has_every_command_the_operator_needs() -> None:
    names = {" ".join(path) for path in COMMANDS}
    for required in ("keys new", "keys show", "genesis init", "node init", "node start",
                     "testnet up",
                     "status", "tx", "query block", "query tx", "query state", "verify-chain",
                     "demo"):
        assert required in names
    for query in FAMILY_QUERIES:
        assert f"query {query}" in names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([*path, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: cityledger " + " ".join(path))


def test_tx_help_lists_installed_operations(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["tx", "--help"], capsys)
    assert "spend" in out and "register_meter" in out and "issue_credential" in out


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2
    assert "required" in err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cityledger: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("argv", [
    ["status"],
    ["query", "block"],
    ["query", "tx", "ab" * 32],
    ["query", "state", "tokens/class/social"],
    ["query", "token_balance", "social", "a" * 40],
    ["query", "governance_proposals"],
])
def test_unreachable_node_exits_1_with_one_line(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url()
    code, out, err = run([*argv, "--rpc", url], capsys)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "cannot reach", url)


def test_keys_new_json_and_show_json_agree(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "alice.json"
    code, out, _ = run(["--json", "keys", "new", "--out", str(path)], capsys)
    assert code == 0
    created = json.loads(out)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, out, _ = run(["keys", "show", str(path), "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    assert shown["address"] == created["address"]
    assert shown["did"] == f"did:city:{created['address']}"
    assert len(shown["public_key"]) == 64


def test_keys_new_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    assert run(["keys", "new", "--out", str(path)], capsys)[0] == 0
    code, _, err = run(["keys", "new", "--out", str(path)], capsys)
    assert code == 1
    assert_one_line_error(err, "already exists")


def test_keys_show_refuses_a_world_readable_key(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    run(["keys", "new", "--out", str(path)], capsys)
    path.chmod(0o644)
    code, _, err = run(["keys", "show", str(path)], capsys)
    assert code == 1
    assert_one_line_error(err, "chmod 600")


def test_genesis_init_json_lists_homes_and_rpc_urls(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "net"
    code, out, _ = run(["genesis", "init", "--validators", "4", "--out", str(out_dir),
                        "--rpc-base-port", "30100", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["rpc_urls"] == [f"http://127.0.0.1:{30100 + i}/rpc" for i in range(4)]
    for home in data["homes"]:
        assert (Path(home) / "node_key.json").exists()
        assert (Path(home) / "config.json").exists()
    assert sorted(p.name for p in (out_dir / "accounts").iterdir()) == [
        "civil-registry.json", "social-services.json", "treasury.json", "utility.json"]
    code, _, err = run(["genesis", "init", "--out", str(out_dir)], capsys)
    assert code == 1
    assert_one_line_error(err, "exists")


def test_node_init_makes_a_joining_home_and_prints_its_validator_entry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = tmp_path / "net"
    assert run(["genesis", "init", "--out", str(net)], capsys)[0] == 0
    home = tmp_path / "joiner"
    def init(home: Path, name: str = "health", rpc: str = "127.0.0.1:30300") -> list[str]:
        return ["node", "init", "--home", str(home), "--genesis", str(net / "genesis.json"),
                "--name", name, "--p2p", "127.0.0.1:30200", "--rpc", rpc]

    code, out, _ = run([*init(home), "--json"], capsys)
    assert code == 0
    entry = json.loads(out)["validator_entry"]
    assert entry["public_key"] == KeyPair.load(home / "node_key.json").public_key.hex()
    assert (entry["name"], entry["p2p_address"]) == ("health", "127.0.0.1:30200")
    assert (home / "tls").is_dir() and (home / "genesis.json").read_bytes() == (
        net / "genesis.json").read_bytes()
    assert json.loads((home / "config.json").read_text())["rpc_listen"] == "127.0.0.1:30300"
    for argv, reason in ((init(home), "already holds a node"),  # never overwrites a key
                         (init(tmp_path / "b", name="treasury"), "already in genesis"),
                         (init(tmp_path / "c", rpc="not-an-endpoint"), "host:port")):
        code, _, err = run(argv, capsys)
        assert code == 1
        assert_one_line_error(err, reason)


def test_tx_with_missing_key_file_exits_1(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tx", "identity", "register", "--key", str(tmp_path / "none.json"),
                        "--rpc", closed_port_url()], capsys)
    assert code == 1
    assert_one_line_error(err, "cannot read key file")


def test_tx_unknown_operation_names_the_real_ones(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tx", "tokens", "mint", "--key", str(tmp_path / "k.json")], capsys)
    assert code == 1
    assert_one_line_error(err, "no operation 'mint'", "spend")


def test_tx_bad_payload_json_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tx", "tokens", "spend", "--key", "k", "--payload", "{nope"], capsys)
    assert code == 1
    assert_one_line_error(err, "--payload is not JSON")
    code, _, err = run(["tx", "tokens", "spend", "--key", "k", "--payload", "[1]"], capsys)
    assert code == 1
    assert_one_line_error(err, "JSON object")


def test_tx_arg_not_an_integer_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tx", "tokens", "spend", "--key", "k", "--arg", "amount=ten"], capsys)
    assert code == 1
    assert_one_line_error(err, "amount", "not an integer")


def test_tx_arg_without_equals_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tx", "tokens", "spend", "--key", "k", "--arg", "amount"], capsys)
    assert code == 1
    assert_one_line_error(err, "NAME=VALUE")


def payload_of(argv: list[str]) -> dict[str, Any]:
    return cli._build_payload(cli.build_parser().parse_args(argv))


def test_tx_args_follow_the_operation_schema() -> None:
    digits_address = "1" * 40
    payload = payload_of(["tx", "tokens", "spend", "--key", "k",
                          "--arg", "class_id=social", "--arg", f"merchant={digits_address}",
                          "--arg", "amount=12", "--arg", "memo=42"])
    # amount takes an int; merchant and memo take text, even when it is all digits
    assert payload == {"class_id": "social", "merchant": digits_address, "amount": 12,
                       "memo": "42"}


def test_tx_json_args_and_payload_merge_with_args_winning() -> None:
    payload = payload_of(["tx", "tokens", "define_class", "--key", "k",
                          "--payload", '{"class_id": "a", "budget": 5}',
                          "--arg", "budget=7", "--arg", 'categories:=["food", "clothing"]',
                          "--arg", "transferable:=false"])
    assert payload == {"class_id": "a", "budget": 7, "categories": ["food", "clothing"],
                       "transferable": False}


def test_tx_payload_from_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"class_id": "social", "amount": 3}')
    assert payload_of(["tx", "tokens", "redeem", "--key", "k", "--payload", f"@{path}"]) == {
        "class_id": "social", "amount": 3}


def test_tx_args_for_an_uninstalled_family_parse_integers_only() -> None:
    assert payload_of(["tx", "parking", "pay", "--key", "k", "--arg", "minutes=30",
                       "--arg", "zone=a1"]) == {"minutes": 30, "zone": "a1"}


def test_query_values_follow_the_query_schema() -> None:
    fields = FAMILY_QUERIES["credential_verify"][0].model_fields
    typed = cli._field_types(fields["value"].annotation)
    # a disclosed value keeps its JSON type: true, 1 and "1" are different commitments
    assert cli._convert("true", typed) is True
    assert cli._convert("1", typed) == 1
    assert cli._convert('"1"', typed) == "1"
    assert cli._convert("low", typed) == "low"
    assert cli._convert("12", cli._field_types(fields["at_height"].annotation)) == 12


def test_query_bad_height_is_refused_before_any_request(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    code, _, err = run(["query", "block", "tip", "--rpc", closed_port_url()], capsys)
    assert code == 1
    assert_one_line_error(err, "'tip' is not a height")


def test_state_key_is_hex_when_it_looks_hex_else_text() -> None:
    assert cli._state_key("746f6b656e73", as_text=False) == b"tokens"
    assert cli._state_key("tokens/class/social", as_text=False) == b"tokens/class/social"
    assert cli._state_key("beef", as_text=True) == b"beef"


def test_verify_chain_on_a_missing_home_exits_1(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["verify-chain", "--home", str(tmp_path / "nothing")], capsys)
    assert code == 1
    assert_one_line_error(err)


def test_demo_without_accounts_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["demo", "--accounts", str(tmp_path), "--rpc", closed_port_url()], capsys)
    assert code == 1
    assert_one_line_error(err)


@pytest.mark.parametrize("argv", [["query", "tx", "abc"], ["query", "block", "--hash", "zz"]])
def test_malformed_hash_is_refused_before_any_request(argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([*argv, "--rpc", closed_port_url()], capsys)
    assert code == 1
    assert_one_line_error(err, "is not a hash")
