"""Write tests/assets/checkpoint_v2: a small compressed checkpoint in format_version 2, as the code at
commit 6f3a991 wrote it (run from a checkout of that commit: python make_checkpoint_v2.py OUT_DIR).
It mixes every layer scheme of that version, INT8 embeddings and a float layer, and stores the
reloaded model's output on two sentences beside it, so newer code can prove it still loads it."""
import sys, json, shutil, tempfile
from pathlib import Path
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast
from safetensors.torch import save_file
from compressor.recipe import Recipe
from compressor.pipeline import compress
out = Path(sys.argv[1]); work = Path("/tmp/legacy_src")
shutil.rmtree(work, ignore_errors=True); work.mkdir()
words = "the a an of and to in is was for on that with as by at from his her it he she they this are be or".split()
words += "man woman dog cat person people car plane train boy girl child water street table".split()
words += "playing riding walking running eating sitting standing cutting guitar piano ball".split()
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words)) + list("abcdefghijklmnopqrstuvwxyz.,")
(work / "vocab.txt").write_text("\n".join(vocab) + "\n")
tok = BertTokenizerFast(vocab_file=str(work / "vocab.txt"), do_lower_case=True)
torch.manual_seed(0)
config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=64)
BertModel(config).eval().save_pretrained(work)
tok.save_pretrained(work)
recipe = Recipe(name="legacy-mix", scheme="int8", group_size=32, embeddings="int8", calib_samples=48,
                sensitivity_samples=16, search_tokens=512, max_length=32, fallback_max_layers=0,
                formats={"*.0.attention.self.query": "nvfp4", "*.0.attention.self.key": "mxfp4",
                         "*.0.attention.self.value": "w4a16-int4", "*.0.attention.output.dense": "fp8",
                         "*.0.intermediate.dense": "w4a8-nvfp4", "*.1.attention.self.query": "float",
                         "*.1.intermediate.dense": "w8a16-int8", "*.1.output.dense": "w4a16-mxfp4"})
sentences = Path("compressor/data/sentences.txt")
handle = compress(work, recipe, sentences, out)
inputs = tok(["a man is playing a guitar", "the dog was running in the street with a ball"], padding=True,
             return_tensors="pt")
from compressor.checkpoint import load_compressed
re = load_compressed(out)
with torch.no_grad():
    hidden = re.model(**inputs).last_hidden_state
save_file({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
           "token_type_ids": inputs["token_type_ids"], "last_hidden_state": hidden.contiguous()},
          str(out.parent / (out.name + "_expected.safetensors")))
print(json.dumps([(l["name"], l["format"]) for l in handle.info["layers"]]))
