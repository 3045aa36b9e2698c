"""Write the bundled conversations sample (data/samples/chat/conversations.jsonl) for ``data=chat``.

OpenAI's chat layout, one conversation per line: ``{"id", "messages": [{"role", "content"}, ...]}``. The
conversations are built from the bundled Amazon sample (data/samples/amazon/), whose titles and descriptions this
project generated, so no third-party text is shipped: a system prompt, a user asking for a product's description,
the assistant answering with it (cleaned of its HTML); one in six conversations goes on to a second product, so
the sample has multi-turn conversations whose first answer is context, not only one-turn pairs. Deterministic; run
once, the output is committed.

    python scripts/make_chat_sample.py
"""

import json
import random
from pathlib import Path

from src.dataio.cleaning import clean_text

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You write short product descriptions for an online shop."
ASK = ("Write a product description for: {title}", "Describe this product: {title}",
       "Product: {title}\nWrite its description.")
FOLLOW_UP = "Now one for: {title}"


def products() -> list[tuple[str, str, str]]:
    rows = []
    for name in ("trn.json", "tst.json"):
        for line in (ROOT / "data/samples/amazon" / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            title, content = clean_text(record["title"]), clean_text(record["content"])
            if title and content:
                rows.append((record["uid"], title, content))
    return list({title: (uid, title, content) for uid, title, content in rows}.values())


def main() -> None:
    rng = random.Random(7)
    items = products()
    rng.shuffle(items)
    out, i = [], 0
    while i < len(items):
        uid, title, content = items[i]
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": rng.choice(ASK).format(title=title)},
                    {"role": "assistant", "content": content}]
        i += 1
        if len(out) % 6 == 5 and i < len(items):
            _, title2, content2 = items[i]
            messages += [{"role": "user", "content": FOLLOW_UP.format(title=title2)},
                         {"role": "assistant", "content": content2}]
            i += 1
        out.append({"id": f"chat-{len(out) + 1:04d}", "messages": messages})
    path = ROOT / "data/samples/chat/conversations.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in out), encoding="utf-8")
    turns = sum(len(c["messages"]) > 3 for c in out)
    print(f"{path}: {len(out)} conversations ({turns} with two products)")


if __name__ == "__main__":
    main()
