"""Translate one sentence through the server with the `openai` Python client, streamed.

    python examples/openai_client.py "A man is walking in the park."
    python examples/openai_client.py --url http://localhost:8000 --model ende --policy wait-5 "..."

The chat route is OpenAI's, under /v1/simul: the sentence arrives word by word inside
the server as the policy reads it, and each chunk carries the words written so far.
"""

from __future__ import annotations

import argparse
import os
import re

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sentence")
    parser.add_argument(
        "--url",
        default=os.environ.get("EXPOSST_URL", "http://localhost:8000"),
        help="the vllm serve address, http:// or ws:// (default: $EXPOSST_URL or localhost:8000)",
    )
    parser.add_argument("--model", default="ende", help="a served adapter or model name")
    parser.add_argument("--policy", default="wait-3")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if any")
    args = parser.parse_args()

    client = OpenAI(base_url=f"{re.sub('^ws', 'http', args.url)}/v1/simul", api_key=args.api_key)
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.sentence}],
        extra_body={"simul": {"policy": args.policy}},
        stream=True,
    )
    for chunk in stream:
        simul = chunk.model_extra["simul"]
        if chunk.choices[0].delta.content:  # a word, written after that many source words
            print(chunk.choices[0].delta.content, end="", flush=True)
        elif "delays" in simul:  # the last chunk: the summary
            print(f"\ndelays {simul['delays']}, tokens computed {simul['tokens_computed']}")


if __name__ == "__main__":
    main()
