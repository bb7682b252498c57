"""Build the documentation site from the notebooks in `nbs/`, without quarto.

    python docs/build.py [OUT] [--screenshot PAGE PNG]

Every notebook becomes one self-contained HTML page in OUT (default `_docs`), rendered from its committed
outputs (nothing is executed): `#| hide` cells are dropped, nbdev directives are stripped from the code
shown, each name the notebook exports gets an API block (signature and docstring, as nbdev's `show_doc`)
after the cell that defines it, and plots are embedded as data URIs. All pages share one template with a
sidebar of every page and one stylesheet; nothing is loaded from the network.

`--screenshot PAGE PNG` also saves a picture of OUT/PAGE.html taken by headless Chromium.
"""
import argparse, ast, base64, html, importlib, inspect, mimetypes, re, shutil, subprocess, tempfile, warnings
from pathlib import Path

import nbformat
from nbconvert.filters.ansi import ansi2html
from nbconvert.filters.highlight import Highlight2HTML
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbdev.config import get_config
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ('Start', 'Tutorials', 'Core', 'Algorithms', 'Tools', 'More')
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')
_highlight = Highlight2HTML(pygments_lexer='python')

# --- pages ---------------------------------------------------------------------------------------------

def page_name(nb_path):
    "The HTML file of a notebook: `index.html`, `tutorial_x.html`, `10_fixmatch` -> `fixmatch.html`"
    return re.sub(r'^\d+[a-z]?_', '', Path(nb_path).stem) + '.html'

def page_group(nb_path):
    "Sidebar group of a notebook, by its name"
    stem = Path(nb_path).stem
    if stem == 'index': return 'Start'
    if stem.startswith('tutorial_'): return 'Tutorials'
    m = re.match(r'(\d+)', stem)
    if not m: return 'More'
    n = int(m.group(1))
    return 'Core' if n < 10 else 'Tools' if 20 <= n < 30 else 'Algorithms'   # algorithms: 10-19, then 30-39

def split_header(source):
    "`(title, summary, rest)` of a markdown cell that starts with `# Title` and `> summary` lines"
    lines = source.splitlines()
    if not lines or not lines[0].startswith('# '): return None,None,source
    i,summary = 1,[]
    while i < len(lines) and (lines[i].startswith('>') or not lines[i].strip()):
        if lines[i].startswith('>'): summary.append(lines[i][1:].strip())
        i += 1
    return lines[0][2:].strip(),' '.join(summary) or None,'\n'.join(lines[i:])

def title_summary(nb):
    "Title and summary of the notebook, from its first markdown cell"
    first = next((c for c in nb.cells if c.cell_type == 'markdown'), None)
    return split_header(first.source)[:2] if first else (None,None)

# --- directives ----------------------------------------------------------------------------------------

_re_directive = re.compile(r'^\s*#\|\s*(.*?)\s*$')

def split_directives(source):
    "`({directive: argument}, code)`: the leading `#| ...` lines of a code cell, and the rest of it"
    lines,dirs = source.splitlines(),{}
    while lines and (_re_directive.match(lines[0]) or not lines[0].strip()):
        m = _re_directive.match(lines.pop(0))
        if m and m.group(1):
            key,_,arg = m.group(1).partition(' ')
            dirs[key.rstrip(':').lower()] = arg.strip()
    return dirs,'\n'.join(lines).rstrip()

def _is_export(dirs): return any(d in dirs for d in ('export', 'exports', 'exporti'))

def defined_names(code):
    "Top-level names defined by `code` (functions, classes, assignments)"
    try: tree = ast.parse('\n'.join(l for l in code.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return []
    names = []
    def targets(t):
        if isinstance(t, ast.Name): names.append(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts: targets(e)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.append(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets: targets(t)
        elif isinstance(node, ast.AnnAssign): targets(node.target)
    return names

# --- API blocks ----------------------------------------------------------------------------------------

_re_addr = re.compile(r' at 0x[0-9a-fA-F]+')

def _fmt_annotation(a):
    if isinstance(a, str): return a
    if isinstance(a, type): return a.__qualname__
    return re.sub(r'\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)', r'\1', str(a))   # typing.Optional[torch.Tensor] -> Optional[Tensor]

def _fmt_param(p):
    s = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
    if p.annotation is not p.empty: s += ':' + _fmt_annotation(p.annotation)
    if p.default is not p.empty: s += '=' + _re_addr.sub('', repr(p.default))
    return s

def signature(name, obj):
    "`name(params)->ret`, as nbdev's `show_doc` writes it; `None` if `obj` has no signature"
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return None
    params = list(sig.parameters.values())
    if inspect.isclass(obj) and params and params[0].name == 'self': params = params[1:]
    parts = []
    for i,p in enumerate(params):
        if p.kind == p.KEYWORD_ONLY and not any(q.kind in (q.KEYWORD_ONLY, q.VAR_POSITIONAL) for q in params[:i]): parts.append('*')
        parts.append(_fmt_param(p))
        if p.kind == p.POSITIONAL_ONLY and (i+1 == len(params) or params[i+1].kind != p.POSITIONAL_ONLY): parts.append('/')
    ret = '' if sig.return_annotation is sig.empty else '->' + _fmt_annotation(sig.return_annotation)
    lines,indent = [f"{name}("],' '*(len(name)+1)
    for i,p in enumerate(parts):
        p += ', ' if i+1 < len(parts) else ''
        if len(lines[-1]) + len(p.rstrip()) > 90 and lines[-1].strip(): lines.append(indent)
        lines[-1] += p
    return '\n'.join(l.rstrip() for l in lines) + f"){ret}"

def docstring(obj):
    "The object's own docstring (a class does not inherit its parent's)"
    doc = obj.__dict__.get('__doc__') if inspect.isclass(obj) else getattr(obj, '__doc__', None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ''

def value_repr(name, obj, width=300):
    "`name = value` for a constant whose repr is plain (no `<object at 0x...>` parts), cut at `width`; else `None`"
    r = f"{name} = {obj!r}"
    if '<' in r or '\n' in r: return None
    return r if len(r) <= width else r[:width-1] + '…'


def api_block(name, obj, md):
    "HTML of one exported name: heading, signature (or type) and docstring"
    is_code = inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj) and hasattr(obj, '__wrapped__')
    sig = signature(name, obj) if is_code else value_repr(name, obj)
    kind = 'class' if inspect.isclass(obj) else 'function' if is_code else type(obj).__name__
    sig_html = f'<pre class="sig"><code>{html.escape(sig or name)}</code></pre>'
    doc = docstring(obj) if is_code else ''
    return (f'<section class="api" id="api-{name}"><h3 class="api-name"><code>{name}</code>'
            f'<span class="api-kind">{html.escape(kind)}</span></h3>'
            f'{sig_html}{md(doc) if doc else ""}</section>\n')

# --- markdown and outputs ------------------------------------------------------------------------------

class _Renderer(IPythonRenderer):
    "nbconvert's markdown renderer, embedding local images found beside the notebooks or at the repository root"
    def _src_to_base64(self, src):
        for base in (Path(self.path).resolve(), ROOT):
            f = (base/src).resolve()
            if f.is_file() and f.is_relative_to(base):
                mime = mimetypes.guess_type(f.name)[0] or 'application/octet-stream'
                return f"data:{mime};base64,{base64.b64encode(f.read_bytes()).decode()}"
        return None

class Site:
    def __init__(self, nbs_path, lib_name, title):
        self.nbs_path,self.lib_name,self.title = Path(nbs_path),lib_name,title
        self.nbs = sorted(p for p in self.nbs_path.glob('*.ipynb') if not p.name.startswith(('_', '.')))
        self.books = {p: nbformat.read(p, as_version=4) for p in self.nbs}
        self.pages = {p.stem: page_name(p) for p in self.nbs}
        self.titles = {p: title_summary(nb)[0] or p.stem for p,nb in self.books.items()}
        self.modules = {p: self._modules(nb) for p,nb in self.books.items()}
        self.api = {n: f"{self.pages[p.stem]}#api-{n}" for p,mods in self.modules.items() for mod in mods.values()
                    for n in getattr(mod, '__all__', [])}

    def _modules(self, nb):
        "`{module name: module}` of the notebook's `default_exp` and `export NAME` targets"
        names = {}
        default = None
        for cell in nb.cells:
            if cell.cell_type != 'code': continue
            dirs,_ = split_directives(cell.source)
            if 'default_exp' in dirs: default = dirs['default_exp']
            for d in ('export', 'exports', 'exporti'):
                if dirs.get(d): names[dirs[d]] = None
        if default: names[default] = None
        return {n: importlib.import_module(f"{self.lib_name}.{n}") for n in names}

    def md(self, source):
        "Markdown to HTML, with local images embedded and links to notebooks and exported names resolved"
        out = MarkdownWithMath(renderer=_Renderer(escape=False, embed_images=True, path=str(self.nbs_path))).render(source)
        return self.link(out)

    def link(self, out):
        "Links to notebooks (`x.ipynb`) pointed at their pages, and inline code naming an exported name linked to its block"
        def nb_href(m):
            target,frag = m.group(2).split('#', 1) if '#' in m.group(2) else (m.group(2), '')
            stem = Path(target).stem
            return f'{m.group(1)}"{self.pages.get(stem, page_name(stem))}{"#"+frag if frag else ""}"'
        out = re.sub(r'(href=)"(?![a-z]+:)([^"#]*\.ipynb(?:#[^"]*)?)"', nb_href, out)
        def code_link(m):   # `Name` of an exported name, outside a link already, becomes a link to its API block
            href = None if m.group(1) else self.api.get(html.unescape(m.group(2)))
            return f'<a href="{href}">{m.group(0)}</a>' if href else m.group(0)
        return re.sub(r'(<a\b[^>]*>.*?</a>)|<code>([A-Za-z_]\w*)</code>', code_link, out, flags=re.S)

    def output(self, o):
        "HTML of one output: rich HTML kept, images embedded, text in <pre>"
        if o.output_type == 'stream':
            return f'<pre class="output {o.name}">{ansi2html(o.text)}</pre>'
        if o.output_type == 'error':
            return f'<pre class="output error">{ansi2html(chr(10).join(o.traceback))}</pre>'
        data,meta = o.get('data', {}),o.get('metadata', {})
        if 'text/html' in data: return f'<div class="output html">{data["text/html"]}</div>'
        for mime in ('image/png', 'image/jpeg', 'image/gif'):
            if mime in data:
                size = meta.get(mime, {})
                dims = ''.join(f' {k}="{size[k]}"' for k in ('width', 'height') if k in size)
                b64 = data[mime].replace('\n', '')
                return f'<div class="output image"><img src="data:{mime};base64,{b64}" alt="output image"{dims}></div>'
        if 'image/svg+xml' in data:
            b64 = base64.b64encode(data['image/svg+xml'].encode()).decode()
            return f'<div class="output image"><img src="data:image/svg+xml;base64,{b64}" alt="output image"></div>'
        if 'text/markdown' in data: return f'<div class="output markdown">{self.md(data["text/markdown"])}</div>'
        if 'text/plain' in data: return f'<pre class="output text">{html.escape(data["text/plain"])}</pre>'
        return ''

    def outputs(self, outs):
        "HTML of a cell's outputs, consecutive stream outputs of one name merged"
        merged = []
        for o in outs:
            if o.output_type == 'stream' and merged and merged[-1].output_type == 'stream' and merged[-1].name == o.name:
                merged[-1] = nbformat.from_dict(dict(merged[-1], text=merged[-1].text + o.text))
            else: merged.append(o)
        return ''.join(self.output(o) for o in merged)

    # --- one page ---

    def body(self, nb_path):
        "HTML of the cells of a notebook, with API blocks of its exported names after the cells defining them"
        nb = self.books[nb_path]
        exported = {n: (mod, n) for mod in self.modules[nb_path].values() for n in getattr(mod, '__all__', [])}
        done,parts,first_md = set(),[],True
        for cell in nb.cells:
            if cell.cell_type == 'markdown':
                src = cell.source
                if first_md: src,first_md = split_header(src)[2],False
                if src.strip(): parts.append(f'<div class="cell markdown">{self.md(src)}</div>\n')
                continue
            if cell.cell_type != 'code': continue
            dirs,code = split_directives(cell.source)
            if 'hide' in dirs or dirs.get('include') == 'false': continue
            show_code = code and dirs.get('echo') != 'false'
            outs = '' if dirs.get('output') == 'false' else self.outputs(cell.get('outputs', []))
            if show_code or outs:
                src_html = f'<div class="source">{_highlight(code)}</div>' if show_code else ''
                outs_html = f'<div class="outputs">{outs}</div>' if outs else ''
                parts.append(f'<div class="cell code">{src_html}{outs_html}</div>\n')
            if _is_export(dirs):
                for n in defined_names(code):
                    if n in exported and n not in done:
                        done.add(n)
                        parts.append(api_block(n, getattr(*exported[n]), self.md))
        for n in exported:   # exported but defined outside the cells parsed above
            if n not in done: parts.append(api_block(n, getattr(*exported[n]), self.md))
        return ''.join(parts)

    def _index_rank(self, nb_path):
        "Pages in the order the index links them, then by name"
        index = self.books.get(self.nbs_path/'index.ipynb')
        pos = ' '.join(c.source for c in index.cells).find(f'({self.pages[nb_path.stem]})') if index else -1
        return (pos if pos >= 0 else float('inf'), nb_path.name)

    def sidebar(self, current):
        groups = {g: [] for g in GROUPS}
        for p in sorted(self.nbs, key=self._index_rank): groups[page_group(p)].append(p)
        cur = ' class="current" aria-current="page"'
        out = [f'<a class="site-title" href="index.html">{html.escape(self.title)}</a>']
        for g,nbs in groups.items():
            if not nbs: continue
            items = ''.join(f'<li><a href="{self.pages[p.stem]}"{cur if p == current else ""}>'
                            f'{html.escape(self.titles[p])}</a></li>' for p in nbs)
            out.append(f'<div class="group"><h2>{g}</h2><ul>{items}</ul></div>')
        return '\n'.join(out)

    def page(self, nb_path):
        title,summary = title_summary(self.books[nb_path])
        title = title or nb_path.stem
        head_title = title if nb_path.stem == 'index' else f"{title} – {self.title}"
        desc = f'<p class="description">{re.sub(r"^<p>|</p>$", "", self.md(summary).strip())}</p>' if summary else ''
        return PAGE.format(head_title=html.escape(head_title), sidebar=self.sidebar(nb_path), title=html.escape(title),
                           description=desc, body=self.body(nb_path))

    def build(self, out):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out/'style.css').write_text(CSS + HtmlFormatter().get_style_defs('.highlight'))
        for p in self.nbs: (out/self.pages[p.stem]).write_text(self.page(p))
        return [out/self.pages[p.stem] for p in self.nbs]

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{head_title}</title>
<link rel="stylesheet" href="style.css">
<link rel="icon" href="data:,">
</head>
<body>
<nav class="sidebar">
{sidebar}
</nav>
<main>
<header><h1>{title}</h1>{description}</header>
{body}</main>
</body>
</html>
"""

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-code: #f6f8fa; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; display: flex; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.sidebar { position: sticky; top: 0; height: 100vh; overflow-y: auto; flex: 0 0 14rem; padding: 1.2rem 1rem;
  border-right: 1px solid var(--line); background: #fafbfc; font-size: 0.93rem; }
.sidebar .site-title { display: block; font-weight: 700; font-size: 1.15rem; margin-bottom: 1rem; color: var(--fg); }
.sidebar h2 { font-size: 0.75rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 1.1rem 0 .3rem; }
.sidebar ul { list-style: none; margin: 0; padding: 0; }
.sidebar li a { display: block; padding: .12rem .5rem; border-radius: 4px; color: var(--fg); }
.sidebar li a.current { background: #e3edf9; color: var(--accent); font-weight: 600; }
main { flex: 1; min-width: 0; max-width: 72rem; padding: 1.5rem 2.5rem 4rem; }
header h1 { margin: 0 0 .3rem; font-size: 2.1rem; }
.description { margin: 0 0 1.5rem; color: var(--muted); font-size: 1.1rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
.anchor-link { visibility: hidden; margin-left: .3rem; font-size: .8em; }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
code { font: 0.88em/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
:not(pre) > code { background: var(--bg-code); padding: .1em .3em; border-radius: 3px; }
pre { margin: 0; padding: .7rem .9rem; overflow-x: auto; font: 0.85rem/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.highlight { background: var(--bg-code); border-radius: 6px; margin: .8rem 0; }
.highlight pre { background: none; }
.cell.code { margin: 1rem 0; }
.cell.code .source .highlight { margin: 0; border: 1px solid var(--line); }
.cell.code .source pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.outputs { border-left: 3px solid var(--line); margin: .3rem 0 0; padding-left: .6rem; overflow-x: auto; }
.output.stderr { background: #fff5f5; }
.output.error { background: #fff0f0; color: #8a1f11; }
.output.image img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .93rem; }
th, td { border: 1px solid var(--line); padding: .3rem .6rem; text-align: left; }
thead { background: var(--bg-code); }
img { max-width: 100%; }
.api { margin: 1.2rem 0 1.6rem; padding: .6rem 1rem .2rem; border: 1px solid var(--line); border-left: 4px solid var(--accent);
  border-radius: 6px; background: #fbfdff; }
.api-name { margin: 0 0 .4rem; font-size: 1.15rem; }
.api-name code { background: none; padding: 0; font-size: 1em; }
.api-kind { margin-left: .6rem; font-size: .75rem; font-weight: 400; color: var(--muted); }
.api .sig { background: var(--bg-code); border-radius: 4px; white-space: pre-wrap; }
@media (max-width: 50rem) { body { display: block; } .sidebar { position: static; height: auto; border-right: 0;
  border-bottom: 1px solid var(--line); } main { padding: 1rem; } }
"""

# --- screenshot ----------------------------------------------------------------------------------------

def find_browser():
    "Path of a Chromium-like browser, or `None`"
    for b in BROWSERS:
        if found := shutil.which(b): return found
    return None

def screenshot(html_file, png, size=(1200, 1600)):
    "Save a PNG of `html_file` as headless Chromium draws it in a `size` window"
    browser = find_browser()
    if browser is None: raise SystemExit("no chromium found: install it (apt-get install chromium) to take screenshots")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', f'--user-data-dir={profile}',
                        f'--screenshot={png}', f'--window-size={size[0]},{size[1]}', Path(html_file).resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    try: from PIL import Image   # optional: a 256-colour palette makes the PNG about half as big
    except ImportError: return png
    Image.open(png).convert('RGB').quantize(256).save(png, optimize=True)
    return png

def main(argv=None):
    warnings.filterwarnings('ignore', category=FutureWarning)   # torch's notices on importing fastai, not ours
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('out', nargs='?', default='_docs', help="output folder (default: _docs)")
    ap.add_argument('--screenshot', nargs=2, metavar=('PAGE', 'PNG'), help="also save a screenshot of PAGE (e.g. fixmatch) to PNG")
    ap.add_argument('--height', type=int, default=1600, help="height of the screenshot in pixels (default: 1600)")
    args = ap.parse_args(argv)
    cfg = get_config(path=ROOT)
    site = Site(cfg.nbs_path, cfg.lib_path.name, cfg.title or cfg.lib_path.name)
    pages = site.build(args.out)
    print(f"{len(pages)} pages in {args.out}")
    if args.screenshot:
        page,png = args.screenshot
        html_file = Path(args.out)/(page if page.endswith('.html') else page + '.html')
        if not html_file.exists(): raise SystemExit(f"no page {html_file}: choose one of {', '.join(p.name for p in pages)}")
        print(f"screenshot of {html_file} in {screenshot(html_file, png, (1200, args.height))}")

if __name__ == '__main__': main()
