"""`cityledger demo`: a scripted day in a city, run against a live network over JSON-RPC.

Agencies register citizens and issue a low-income credential; the treasury issues social
tokens; a citizen buys food and is refused at a bar; the grocer redeems; an hourly-work
contract pays a part-time worker; two households trade solar surplus. Every step prints
the block that committed it. It doubles as an example of driving the ledger from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DemoError(Exception):
    """A step did not turn out as scripted: one line saying which and why."""


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
            raise DemoError(f"demo step '{title}': {family} {op}: {exc}") from exc
        receipt = result["receipt"]
        if receipt["code"] != expect:
            raise DemoError(f"demo step '{title}': expected {expect}, got {receipt['code']}: "
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
            raise DemoError(f"demo: {method}: {exc}") from exc

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
            raise DemoError(f"demo: {why} needs {target - start} more blocks; "
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
            raise DemoError(f"demo needs the {name} agency key from `genesis init` "
                           f"({exc.reason})") from exc
    return keys


async def city_day(args: argparse.Namespace) -> _CityDay:
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
            raise DemoError(f"demo: cannot use the node at {args.rpc}: {exc}") from exc
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
            raise DemoError(f"demo: Amira's disclosure did not verify: {check['reason']}")
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
            raise DemoError(f"demo: contract {contract_id} is {contract['status']} "
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
            raise DemoError("demo: could not place the offer and the bid in one market interval")
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
            raise DemoError(f"demo: the {DEMO_ZONE} market of interval {interval} did not clear")
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


