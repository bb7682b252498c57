"Resumable runs in a pool of one-thread processes, for the benchmarks: each finished run is appended to a JSON-lines log, and a new start skips the runs the log holds"
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

def _one_thread():
    import torch, warnings
    torch.set_num_threads(1)   # the per-core figure; two threads on two busy cores spin in OpenMP barriers
    warnings.filterwarnings('ignore')

def run_pool(todo:list, fn, log, key, workers:int=2, say=print)->list:
    "Every record of the JSON-lines file `log` and, for each spec of `todo` whose `key` it lacks, `fn(spec)` run in a pool of `workers` processes, appended to `log` as it finishes and told to `say`"
    log = Path(log)
    done = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    have = {key(r) for r in done}
    todo = [t for t in todo if key(t) not in have]
    with ProcessPoolExecutor(workers, mp_context=get_context('spawn'), initializer=_one_thread) as ex:
        for f in as_completed([ex.submit(fn, t) for t in todo]):
            r = f.result()
            done.append(r)
            with log.open('a') as fh: fh.write(json.dumps(r) + '\n')
            say(r)
    return done
