# ts2net-deploy: the user's entry points. Every target installs what it needs (make setup).
PYTHON ?= python3
TS2NET  = $(PYTHON) -m cli
STAMP   = .cache/setup.stamp

# make export [CKPT=path] [CLIP=path] [BPE=path] [OUT=bundles/default] [MAX_FRAMES=] [MAX_WORDS=] [FRAME_MASK=]
OUT        ?= bundles/default
CKPT       ?=
CLIP       ?=
BPE        ?=
MAX_FRAMES ?=
MAX_WORDS  ?=
FRAME_MASK ?=
OPSET      ?= 17
# make engine [OUT=bundle] [BATCH="text=1,16,64 video=1,4,16"] [WORKSPACE=MB] [TIMING_CACHE=path]
BATCH        ?=
WORKSPACE    ?=
TIMING_CACHE ?=
# make bench [OUT=bundle] [BACKENDS=ort-cpu,openvino] [BATCH_SIZES=1,8]
BACKENDS    ?= ort-cpu,openvino
BATCH_SIZES ?= 1,8
DATA        ?= data/synth
DEMO_BUNDLE ?= bundles/demo
DEMO_REPORTS ?= reports/demo

# make serve-setup [SERVE_VENV=dir]: the Python 3.13 environment PyTriton's tritonserver runs in
SERVE_VENV ?= .cache/serve-venv
# make serve-load [OUT=bundle] [CLIENTS=8] [TEXTS=96] [VIDEOS=24]
CLIENTS ?= 8
TEXTS   ?= 96
VIDEOS  ?= 24

.PHONY: setup test export engine bench bench-search data train-demo train-levers demo clean serve-setup serve-setup-if-available serve-load cpp cpp-build
.PRECIOUS: runs/%/model.safetensors

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[export,openvino,dev,triton,search]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

# The real-server tests need the serve environment; created here when Python 3.13 exists (cached).
test: setup cpp-build serve-setup-if-available
	TS2NET_SERVE_VENV=$(abspath $(SERVE_VENV)) $(PYTHON) -m pytest -q

serve-setup: setup
	$(PYTHON) -m runtime.triton.environment --venv $(SERVE_VENV)

serve-setup-if-available: setup
	$(PYTHON) -m runtime.triton.environment --venv $(SERVE_VENV) --if-available

# Bounded load test of `ts2net serve` on 127.0.0.1 (CLIENTS concurrent clients vs one), reports/serve-load/
serve-load: serve-setup
	@test -f $(OUT)/manifest.json || $(MAKE) export OUT=$(OUT)
	TS2NET_SERVE_VENV=$(abspath $(SERVE_VENV)) $(TS2NET) serve-load --bundle $(OUT) --clients $(CLIENTS) --texts $(TEXTS) \
		--videos $(VIDEOS) --out reports/serve-load

# The C++ consumer (cpp/): library `ts2net`, CLI cpp/build/ts2net-cpp, example, test helper.
# OpenVINO's C++ headers, libraries and CMake config come from its pip wheel; FFmpeg, nlohmann-json
# and OpenSSL from Debian's -dev packages (.ci/run installs them).
CPP_BUILD ?= cpp/build
cpp: setup cpp-build

cpp-build:
	cmake -S cpp -B $(CPP_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DOpenVINO_DIR="$$($(PYTHON) -c 'from openvino.utils import get_cmake_path; print(get_cmake_path())')" >/dev/null
	cmake --build $(CPP_BUILD)

export: setup
	$(TS2NET) export --out $(OUT) --opset $(OPSET) \
		$(if $(CKPT),--checkpoint $(CKPT)) $(if $(CLIP),--clip $(CLIP)) $(if $(BPE),--bpe $(BPE)) \
		$(if $(MAX_FRAMES),--max-frames $(MAX_FRAMES)) $(if $(MAX_WORDS),--max-words $(MAX_WORDS)) \
		$(if $(FRAME_MASK),--frame-mask $(FRAME_MASK))

engine: setup
	$(TS2NET) engine --bundle $(OUT) $(foreach b,$(BATCH),--batch $(b)) \
		$(if $(WORKSPACE),--workspace $(WORKSPACE)) $(if $(TIMING_CACHE),--timing-cache $(TIMING_CACHE))

# make bench-search [SIZES=10000,100000] [ENGINES=scan,faiss-exact,faiss,milvus]: search engines on synthetic data
SIZES   ?= 10000,100000
ENGINES ?= scan,faiss-exact,faiss,milvus
bench-search: setup
	$(TS2NET) bench-search --sizes $(SIZES) --engines $(ENGINES) --out reports/search

bench: setup
	@test -f $(OUT)/manifest.json || $(MAKE) export OUT=$(OUT)
	$(TS2NET) bench --bundle $(OUT) --backends $(BACKENDS) --batch-sizes $(BATCH_SIZES) --out reports/bench

# The whole product on the embedded default model: benchmark test split (generated if absent),
# export + validation (FP32, FP16, INT8 graphs; bf16 row), runtime parity (FP32, FP16 on the reference; bf16
# and int8 also on the 1,000-clip test split against FP32), evaluation (FP32), latency of every backend and
# precision next to PyTorch eager FP32 / BF16 autocast, one summary. A bf16 / int8 gate that fails on the
# test split does not stop the demo (its figures are in the summary, and the failure is recorded in the
# bundle so `ts2net index` / `search` do not default to that path).
demo: setup cpp-build
	$(TS2NET) synthbench --out $(DATA) --splits test --test 1000
	$(TS2NET) export --out $(DEMO_BUNDLE)
	$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend ort-cpu --precision fp32 --out $(DEMO_REPORTS)/parity-fp32
	$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend ort-cpu --precision fp16 --out $(DEMO_REPORTS)/parity-fp16
	-$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend openvino --precision bf16 --skip-unsupported \
		--csv $(DATA)/test.csv --videos $(DATA)/videos --no-progress --out $(DEMO_REPORTS)/parity-bf16
	-$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend openvino --precision bf16 --text-precision bf16 \
		--skip-unsupported --csv $(DATA)/test.csv --videos $(DATA)/videos --no-progress \
		--out $(DEMO_REPORTS)/parity-bf16-text-bf16
	-$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend openvino --precision int8 \
		--csv $(DATA)/test.csv --videos $(DATA)/videos --no-progress --out $(DEMO_REPORTS)/parity-int8
	-$(TS2NET) parity --bundle $(DEMO_BUNDLE) --backend ort-cpu --precision int8 \
		--csv $(DATA)/test.csv --videos $(DATA)/videos --no-progress --out $(DEMO_REPORTS)/parity-int8-ort
	@mkdir -p $(DEMO_REPORTS)/cpp
	$(CPP_BUILD)/ts2net-cpp parity $(DEMO_BUNDLE) --json $(DEMO_REPORTS)/cpp/parity-fp32.json
	$(TS2NET) cpp-bench --bundle $(DEMO_BUNDLE) --csv $(DATA)/test.csv --videos $(DATA)/videos --first 100 \
		--cli $(CPP_BUILD)/ts2net-cpp --out $(DEMO_REPORTS)/cpp
	$(TS2NET) eval --bundle $(DEMO_BUNDLE) --csv $(DATA)/test.csv --videos $(DATA)/videos --out $(DEMO_REPORTS)/eval
	$(TS2NET) bench --bundle $(DEMO_BUNDLE) --batch-sizes 1,8 --out $(DEMO_REPORTS)/bench
	$(TS2NET) summary --bundle $(DEMO_BUNDLE) --reports $(DEMO_REPORTS) --ablations ts2net/demo/ablations.json

# Reproduce the shipped demo model and its ablations (same data, seed and budget for each variant).
# DEMO_LEVERS: the levers against the hard-pair plateau (docs/demo.md, "Training levers"), the same for
# every variant; hard pairs are scored by change type every TRACK_PAIRS_EVERY steps (curves kept in
# reports/demo-training/ablations/).
DEMO_EPOCHS ?= 10
TRAIN_THREADS ?=
DEMO_LEVERS ?=
TRACK_PAIRS_EVERY ?= 187
TRAIN_ARGS   = --data $(DATA) --preset demo --epochs $(DEMO_EPOCHS) --batch-size 16 --seed 0 --quiet \
	$(if $(TRAIN_THREADS),--threads $(TRAIN_THREADS)) $(DEMO_LEVERS) --track-pairs-every $(TRACK_PAIRS_EVERY)
# baseline = CLIP4Clip meanP (no shift, no selection, no temporal module); +shift adds token shift to
# it; +selection adds TS2-Net's selection with the temporal transformer its tokens feed; full = both
SET_full      =
SET_baseline  = --set token_shift=false --set token_selection=false --set sim_header=meanP
SET_shift     = --set token_selection=false --set sim_header=meanP
SET_selection = --set token_shift=false
ABLATION_NAME_full = full
ABLATION_NAME_baseline = baseline
ABLATION_NAME_shift = +shift
ABLATION_NAME_selection = +selection
VARIANTS = full baseline shift selection

runs/%/model.safetensors:
	$(TS2NET) train $(TRAIN_ARGS) --out runs/$* $(SET_$*)

reports/ablations/%/done: runs/%/model.safetensors
	$(TS2NET) export --checkpoint runs/$* --out bundles/ablation-$*
	rm -rf reports/ablations/$* && $(TS2NET) eval --bundle bundles/ablation-$* --csv $(DATA)/test.csv \
		--videos $(DATA)/videos --out reports/ablations/$*
	touch $@

train-demo: data $(foreach v,$(VARIANTS),reports/ablations/$(v)/done)
	$(TS2NET) summary collect-ablations --out ts2net/demo/ablations.json \
		$(foreach v,$(VARIANTS),"$(ABLATION_NAME_$(v))=$$(ls -t reports/ablations/$(v)/eval-*.json | head -1),runs/$(v)/train_summary.json")
	$(PYTHON) -m ts2net.training.pair_tracking --out reports/demo-training/ablations \
		$(foreach v,$(VARIANTS),$(v)=runs/$(v))
	mkdir -p ts2net/demo && cp runs/full/model.safetensors runs/full/config.json runs/full/tokenizer.json ts2net/demo/

# The short lever measurement of docs/demo.md ("What was tried"): 32 motion pairs (the first 64
# train clips) from scratch, 400 steps, each lever against the plain recipe; hard pairs scored every
# 25 steps; curves and the comparison in reports/demo-training/overfit-$(LEVER_PRESET)/.
LEVER_DATA   ?= data/pairs
LEVER_PRESET ?= demo
LEVER_SETS   ?=
LEVER_RUNS   ?= default pairloss1 pairloss4
LEVERS_default   =
LEVERS_pairloss1 = --pair-loss-weight 1
LEVERS_pairloss4 = --pair-loss-weight 4

$(LEVER_DATA)/subsets.json: | setup
	$(TS2NET) synthbench --out $(LEVER_DATA) --train 160 --val 0 --test 300

runs/levers-$(LEVER_PRESET)/%/train_summary.json: $(LEVER_DATA)/subsets.json
	$(TS2NET) train --data $(LEVER_DATA) --out runs/levers-$(LEVER_PRESET)/$* --preset $(LEVER_PRESET) $(LEVER_SETS) \
		--epochs 100 --batch-size 16 --max-train-clips 64 --seed 0 --quiet --track-pairs-every 25 \
		$(if $(TRAIN_THREADS),--threads $(TRAIN_THREADS)) $(LEVERS_$*)

train-levers: $(foreach r,$(LEVER_RUNS),runs/levers-$(LEVER_PRESET)/$(r)/train_summary.json)
	$(PYTHON) -m ts2net.training.pair_tracking --out reports/demo-training/overfit-$(LEVER_PRESET) \
		$(foreach r,$(LEVER_RUNS),$(r)=runs/levers-$(LEVER_PRESET)/$(r))

# Benchmark data: test split (1k-A style) + train/val splits for training the demo model.
data: setup
	$(TS2NET) synthbench --out $(DATA) --train 3000 --val 200 --test 1000

clean:
	rm -rf bundles .cache .pytest_cache
