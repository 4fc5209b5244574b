"""Tool calls in `auto` mode at volume (not part of CI).

Sends N chat requests (default 200) to a running node, each offering a
random two to four of the tools below (always the one the question needs)
with tool_choice "auto", and reports how many answers called a tool and
whether every call named an offered tool with arguments valid against its
schema (checked with the `jsonschema` package). The requests are seeded, so
a run can be repeated.

Usage: python tools.py --base http://127.0.0.1:7833/v1 --model ID [--n 200] [--seed 1]
"""
import argparse
import json
import random
import time
import urllib.request

import jsonschema


def fn(name, description, properties, required):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required, "additionalProperties": False},
        },
    }


TOOLS = {
    "get_weather": fn("get_weather", "The current weather in a city", {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city"]),
    "add": fn("add", "Adds two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
    "search_web": fn("search_web", "Searches the web", {"query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}, ["query"]),
    "send_email": fn("send_email", "Sends an email", {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}, ["to", "subject", "body"]),
    "create_event": fn(
        "create_event",
        "Adds an event to the calendar",
        {"title": {"type": "string"}, "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}, "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 600}},
        ["title", "date"],
    ),
    "convert_currency": fn(
        "convert_currency",
        "Converts an amount of money",
        {"amount": {"type": "number", "minimum": 0}, "from": {"enum": ["EUR", "USD", "GBP", "JPY", "CHF"]}, "to": {"enum": ["EUR", "USD", "GBP", "JPY", "CHF"]}},
        ["amount", "from", "to"],
    ),
    "get_stock_price": fn("get_stock_price", "The latest price of a stock", {"symbol": {"type": "string", "pattern": "^[A-Z]{1,5}$"}}, ["symbol"]),
    "translate": fn("translate", "Translates text", {"text": {"type": "string"}, "target_language": {"enum": ["French", "German", "Spanish", "Italian", "Japanese"]}}, ["text", "target_language"]),
    "set_timer": fn("set_timer", "Starts a timer", {"seconds": {"type": "integer", "minimum": 1, "maximum": 86400}, "label": {"type": "string"}}, ["seconds"]),
    "lookup_order": fn("lookup_order", "Finds a customer order", {"order_id": {"type": "integer", "minimum": 1}, "include_items": {"type": "boolean"}}, ["order_id"]),
}

QUESTIONS = [
    ("get_weather", ["What is the weather in {city}?", "Is it raining in {city} right now?", "How warm is it in {city} in fahrenheit?"]),
    ("add", ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."]),
    ("search_web", ["Search the web for {topic}.", "Find me the top 3 articles about {topic}."]),
    ("send_email", ["Email {person}@example.com that the meeting moved to Friday.", "Send a note to {person}@example.com saying thanks for the report."]),
    ("create_event", ["Put a dentist appointment on 2027-03-{day:02d} in my calendar.", "Schedule a 45 minute team sync on 2027-01-{day:02d}."]),
    ("convert_currency", ["Convert {a} euros to dollars.", "How many yen is {a} Swiss francs?"]),
    ("get_stock_price", ["What is Apple's stock price?", "Look up the price of MSFT."]),
    ("translate", ["Translate 'good morning' into French.", "How do you say '{topic}' in German?"]),
    ("set_timer", ["Set a timer for {a} minutes.", "Remind me in {b} seconds to check the oven."]),
    ("lookup_order", ["Where is order {a}{b}?", "Show me the items of order number {a}."]),
]
CITIES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Madrid"]
TOPICS = ["solar panels", "bee keeping", "rust programming", "the history of tea", "electric bikes"]
PEOPLE = ["ana", "bob", "chen", "dara", "emil"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    called = valid = invalid = truncated = 0
    cut = []
    problems = []
    started = time.time()
    for i in range(a.n):
        need, forms = rng.choice(QUESTIONS)
        q = rng.choice(forms).format(city=rng.choice(CITIES), a=rng.randint(2, 99), b=rng.randint(2, 99), topic=rng.choice(TOPICS), person=rng.choice(PEOPLE), day=rng.randint(1, 28))
        others = rng.sample([k for k in TOOLS if k != need], rng.randint(1, 3))
        offered = [need] + others
        rng.shuffle(offered)
        body = {"model": a.model, "messages": [{"role": "user", "content": q}], "tools": [TOOLS[k] for k in offered], "tool_choice": "auto", "temperature": 0.7, "seed": i, "max_tokens": 160}
        req = urllib.request.Request(a.base + "/chat/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            res = json.loads(r.read())
        calls = res["choices"][0]["message"].get("tool_calls") or []
        called += bool(calls)
        if res["choices"][0]["finish_reason"] == "length" and calls:
            # Cut short by max_tokens inside a call: its last arguments are unfinished.
            truncated += 1
            cut.append(f"request {i}: {q!r}: {calls[-1]['function']['name']} cut at {calls[-1]['function']['arguments'][-80:]!r}")
            calls = calls[:-1]
        for c in calls:
            name = c["function"]["name"]
            try:
                if name not in offered:
                    raise ValueError(f"{name} was not offered")
                jsonschema.validate(json.loads(c["function"]["arguments"]), TOOLS[name]["function"]["parameters"])
                valid += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                invalid += 1
                problems.append(f"request {i}: {q!r}: {name} {c['function']['arguments']!r}: {e}")
        print(f"\r{i + 1}/{a.n} requests, {called} with calls, {valid} valid calls, {invalid} invalid", end="", flush=True)
    print()
    print(json.dumps({"requests": a.n, "answers_with_calls": called, "calls_valid": valid, "calls_invalid": invalid, "cut_by_max_tokens": truncated, "secs": round(time.time() - started, 1)}))
    for p in problems:
        print(p)
    for c in cut:
        print(c)
    raise SystemExit(1 if invalid else 0)


if __name__ == "__main__":
    main()
