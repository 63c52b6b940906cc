#!/usr/bin/env bash
# Mutation testing of one module (not CI): tests/mutation.sh MODULE [more mutmut name patterns]
#
# MODULE is one of: metrics normalisation store artifacts merging bonesoup modpo mage-combiner.
# The working tree is copied to ${MUTATION_DIR:-/tmp/mobench-mut-MODULE} (mutmut writes mutants/ beside the
# sources), the copy's [tool.mutmut] is narrowed to the module's file and to the fast test files that check
# it (below; slow tests deselected), and mutmut runs the module's functions at nice 19, then prints the
# counts per status and each survivor's diff. Run with the usual environment (MOBENCH_DATA_DIR etc.).
# Set MUTATION_CHILDREN (default 2) for mutmut's --max-children, and MOBENCH_TEST_CACHE so that every mutant's
# pytest session reuses the micro model built in the first one.
set -euo pipefail

module=${1:?usage: tests/mutation.sh MODULE (metrics normalisation store artifacts merging bonesoup modpo mage-combiner)}
shift
case "$module" in
  metrics)
    files=(mobench/metrics.py); tests=(tests/test_metrics.py tests/test_properties.py -k "not normalisation and not zero_std and not grid_points and not merge and not bone_soup")
    names=("mobench.metrics*") ;;
  normalisation)
    files=(mobench/runner.py mobench/api.py); tests=(tests/test_runner.py tests/test_properties.py -k "score_point or direction or normalisation or zero_std")
    names=("mobench.runner.x_score_point*" "mobench.api.xǁNormalisationǁ*") ;;
  store)
    files=(mobench/store.py)
    # test_store.py without its three CLI-subprocess runs (minutes each at nice 19 on a loaded machine)
    tests=(tests/test_store.py tests/test_store_kill.py tests/test_runner.py::test_generations_of_an_attempt_killed_before_its_row_are_dropped
           -k "not sigkill_in_the_middle and not resume_by_run_id and not two_concurrent_writers")
    names=("mobench.store.x__append*" "mobench.store.x_read_jsonl*" "mobench.store.x_write_json_atomic*"
           "mobench.store.x__hashable*" "mobench.store.xǁRunDirǁgenerations*" "mobench.store.xǁRunDirǁappend_point*"
           "mobench.store.xǁRunDirǁrows*" "mobench.store.xǁRunDirǁ_refresh_keys*" "mobench.store.xǁRunDirǁdone_keys*") ;;
  artifacts)
    files=(mobench/artifacts.py); tests=(tests/test_artifacts.py)
    names=("mobench.artifacts.x_get_or_build*" "mobench.artifacts.x__locked*" "mobench.artifacts.x_key_digest*"
           "mobench.artifacts.x_artifact_path*" "mobench.artifacts.x__full_key*" "mobench.artifacts.x_is_built*"
           "mobench.artifacts.x_code_version*" "mobench.artifacts.x__publish*") ;;
  merging)
    files=(mobench/merging.py); tests=(tests/test_merging.py tests/test_properties.py -k "merge or merging or merged or refuses or one_hot or integer_coefficients")
    names=("mobench.merging*") ;;
  bonesoup)
    # the formula (B, c = (B^T)^-1 diag(k) mu, the k grid, the backbones' rows); the k search decodes with a model
    # per candidate and is left out, with its test
    files=(plugins/mage/bonesoup.py)
    tests=(tests/test_bonesoup.py tests/test_properties.py::test_bone_soup_coefficients_solve_the_transposed_system -k "not choose_k")
    names=("plugins.mage.bonesoup.x_mixing_matrix*" "plugins.mage.bonesoup.x_bone_soup_coefficients*"
           "plugins.mage.bonesoup.x_k_grid*" "plugins.mage.bonesoup.x_spread*" "plugins.mage.bonesoup.x_train_backbones*") ;;
  modpo)
    files=(plugins/modpo/trainer.py)
    # the loss's wiring (beta / w_k, the reference shifted by m / beta, the cache) without training; the tests that
    # train micro models through trl (the loss against trl's DPO loss, the plugin end to end) are left out
    tests=(tests/test_modpo.py -k "hand_worked or choose_k or divides_beta or shifted_by_the_margin or plan_and_margin or score_differences")
    names=("plugins.modpo.trainer.x_choose_k*" "plugins.modpo.trainer.x_score_differences*"
           "plugins.modpo.trainer.x_weighted_margins*" "plugins.modpo.trainer.x_modpo_plan*"
           "plugins.modpo.trainer.x__trainer_class*") ;;
  mage-combiner)
    files=(plugins/mage/guidance.py); tests=(tests/test_mage_combiner.py)
    names=("plugins.mage.guidance.x_mage_combiner*") ;;
  *) echo "unknown module $module" >&2; exit 2 ;;
esac
# Extra arguments are more name patterns; with MUTATION_ONLY=1 they replace the module's (e.g. to re-run the
# survivors of a previous run, by name, against tests added since).
if [ -n "${MUTATION_ONLY:-}" ] && [ $# -gt 0 ]; then names=("$@"); else names+=("$@"); fi
# MUTATION_TESTS (space-separated pytest arguments) replaces the module's test selection, e.g. a subset for a re-run.
if [ -n "${MUTATION_TESTS:-}" ]; then read -r -a tests <<< "$MUTATION_TESTS"; fi

src=$(git rev-parse --show-toplevel)
work=${MUTATION_DIR:-/tmp/mobench-mut-$module}
rm -rf "$work" && mkdir -p "$work"
(cd "$src" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work" 2>/dev/null || true)
cd "$work"

# Narrow the copy's [tool.mutmut]: only this module's files, only its tests, no slow (SmolLM2) tests.
python - "${#files[@]}" "${files[@]}" "${tests[@]}" <<'PY'
import json, re, sys
n = int(sys.argv[1]); files, tests = sys.argv[2:2 + n], sys.argv[2 + n:]
text = open("pyproject.toml").read()
head, sep, tail = text.partition("[tool.mutmut]")
end = tail.find("\n[")
section, rest = (tail, "") if end < 0 else (tail[:end], tail[end:])
section = re.sub(r"only_mutate = \[.*?\]", "only_mutate = " + json.dumps(files), section, flags=re.S)
section = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]",
                 "pytest_add_cli_args_test_selection = " + json.dumps(tests), section, flags=re.S)
section = re.sub(r"pytest_add_cli_args = \[.*?\]",
                 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not slow"]', section, flags=re.S)
open("pyproject.toml", "w").write(head + sep + section + rest)
PY

# One intra-op thread: mutmut forks its test children from a process where torch has already started its OpenMP
# pool, and a forked child that enters a parallel region can spin forever in libgomp; those hangs end at mutmut's
# CPU limit and were being counted as "timeout" kills (13 of 20 MAGE-combiner mutants in one run, each a plain
# assertion-level change). With one thread no pool exists to deadlock on; --max-children still uses the cores.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nice -n 19 mutmut run --max-children "${MUTATION_CHILDREN:-2}" "${names[@]}" || true

# Counts per status for the selected names, then each survivor's diff.
python - "${names[@]}" <<'PY'
import collections, fnmatch, json, pathlib, sys
from mutmut.stats import status_by_exit_code
codes = {}
for meta in pathlib.Path("mutants").rglob("*.meta"):
    codes.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
picked = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in sys.argv[1:])}
count = collections.Counter(status_by_exit_code[v] for v in picked.values())
killed = count["killed"] + count["timeout"]
scored = killed + count["survived"] + count["no tests"]
print(f"mutants {len(picked)}: " + ", ".join(f"{s} {c}" for s, c in sorted(count.items())))
print(f"score (killed incl. timeouts / killed + survived + no tests) = {killed}/{scored} = {100 * killed / max(scored, 1):.1f}%")
for k in sorted(k for k, v in picked.items() if status_by_exit_code[v] in ("survived", "no tests")):
    print("SURVIVOR", k)
PY
for name in $(mutmut results 2>/dev/null | awk -F: '/survived|no tests/ {gsub(/ /, "", $1); print $1}'); do
  mutmut show "$name"
done
