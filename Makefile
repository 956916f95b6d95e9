# ts2net-deploy: the user's entry points. Every target installs what it needs (make setup).
PYTHON ?= python3
TS2NET  = $(PYTHON) -m runtime.cli
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
# make bench [OUT=bundle] [BACKENDS=ort-cpu] [BATCH_SIZES=1,8]
BACKENDS    ?= ort-cpu
BATCH_SIZES ?= 1,8
DATA        ?= data/synth

.PHONY: setup test export engine bench data train-demo demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[export,dev]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

test: setup
	$(PYTHON) -m pytest -q

export: setup
	$(TS2NET) export --out $(OUT) --opset $(OPSET) \
		$(if $(CKPT),--checkpoint $(CKPT)) $(if $(CLIP),--clip $(CLIP)) $(if $(BPE),--bpe $(BPE)) \
		$(if $(MAX_FRAMES),--max-frames $(MAX_FRAMES)) $(if $(MAX_WORDS),--max-words $(MAX_WORDS)) \
		$(if $(FRAME_MASK),--frame-mask $(FRAME_MASK))

engine: setup
	$(TS2NET) engine --bundle $(OUT) $(foreach b,$(BATCH),--batch $(b)) \
		$(if $(WORKSPACE),--workspace $(WORKSPACE)) $(if $(TIMING_CACHE),--timing-cache $(TIMING_CACHE))

bench: setup
	@test -f $(OUT)/manifest.json || $(MAKE) export OUT=$(OUT)
	$(TS2NET) bench --bundle $(OUT) --backends $(BACKENDS) --batch-sizes $(BATCH_SIZES) --out reports/bench

clean:
	rm -rf bundles .cache .pytest_cache
