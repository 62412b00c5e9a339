#!/usr/bin/env bash
# On the device: join the staged parts and install vLLM beside the device's own torch.
# The device's python3 is itself a venv (/opt/torch/.venv), so a nested venv would not see its
# torch; the wheels go into /var/stage/site instead, put first on PYTHONPATH and PATH.
set -euo pipefail
cd /var/stage
if [ ! -d site/vllm ]; then
  cat wheels.tar.xz.* | xz -d | tar -x
  python3 -m pip install -q --no-index --no-deps --no-compile --target /var/stage/site wheels/*.whl
fi
export PYTHONPATH=/var/stage/site PATH=/var/stage/site/bin:$PATH
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
