"""Merge the JSON files of several `fastai-ssl bench` runs (e.g. algorithms split over processes) into one table, JSON and plot.

    python benchmarks/merge_bench.py OUT_DIR A/bench.json B/bench.json ...
"""
import json, sys
from pathlib import Path
from fastai_ssl.cli import bench_table, plot_bench

def main(out, *fnames):
    res = [json.loads(Path(f).read_text()) for f in fnames]
    rows = [r for o in res for r in o['runs']]
    first = lambda rs: [r for r in rs if not r.get('reference')] + [r for r in rs if r.get('reference')]
    rows = first(rows)
    if len({(r['data'], r['steps'], r['model'], r['opt'], r['lr']) for r in rows}) > 1: sys.exit('the runs differ in data, steps, model or optimizer')
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    (out/'bench.json').write_text(json.dumps(dict(commands=[o['command'] for o in res], runs=rows), indent=1))
    plot_bench(rows, out/'bench.png')
    table = bench_table(rows)
    (out/'bench.txt').write_text(table + '\n')
    print(table)

if __name__ == '__main__': main(*sys.argv[1:])
