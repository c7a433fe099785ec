#!/bin/sh
# Writes a few valid frames into corpus/frame_decode/ as a seed corpus (run from fuzz/).
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/frame_decode
cd corpus/frame_decode
# {"envelopes": []}
echo 0000000ca169656e76656c6f70657380 | xxd -r -p > batch_empty
# {"envelopes": [{"v": 1, "sender": h'0024', "enc": h'11111111', "ct": h'2222222222'} x2]}
echo 0000004ca169656e76656c6f70657382a46176016673656e64657242002463656e634411111111626374452222222222a46176016673656e64657242002463656e634411111111626374452222222222 | xxd -r -p > batch_two
# {"outcomes": ["stored", "duplicate", {"rejected": "not_a_contact"}]}
echo 00000034a1686f7574636f6d6573836673746f726564696475706c6963617465a16872656a65637465646d6e6f745f615f636f6e74616374 | xxd -r -p > response
