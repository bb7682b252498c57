"The docs site (docs/build.py): built from the notebooks' committed outputs, served over HTTP, checked in headless Chromium"
import ast, base64, functools, http.server, importlib.util, re, subprocess, sys, threading, urllib.error, urllib.parse, urllib.request
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import nbformat, pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))

_spec = importlib.util.spec_from_file_location('docs_build', ROOT/'docs'/'build.py')
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


class Dom(HTMLParser):
    "What the tests look at in a page: links, image sources, ids, code cells, the sidebar, text"
    def __init__(self, dom):
        super().__init__(convert_charrefs=True)
        self.refs,self.imgs,self.ids,self.nav_links,self.classes = [],[],set(),[],Counter()
        self.title,self.h1,self.text,self.code_text = '','',[],[]
        self._stack = []   # (tag, classes) of the open elements
        self.feed(dom)

    def _inside(self, tag=None, cls=None):
        return any((tag is None or t == tag) and (cls is None or cls in c) for t,c in self._stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get('class') or '').split())
        if a.get('id'): self.ids.add(a['id'])
        for c in classes: self.classes[(tag, c)] += 1
        if tag == 'a' and a.get('href'):
            self.refs.append(('a', a['href']))
            if self._inside('nav', 'sidebar'): self.nav_links.append(a['href'])
        if tag == 'link' and a.get('href'): self.refs.append(('link', a['href']))
        if tag in ('img', 'script', 'iframe', 'source') and a.get('src'):
            self.refs.append((tag, a['src']))
            if tag == 'img': self.imgs.append(a['src'])
        if tag not in ('meta', 'link', 'img', 'br', 'hr', 'input', 'source'): self._stack.append((tag, classes))

    def handle_endtag(self, tag):
        for i in range(len(self._stack)-1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        if self._inside('title'): self.title += data
        if self._inside('h1'): self.h1 += data
        if self._inside('style') or self._inside('script'): return
        self.text.append(data)
        if self._inside('div', 'source'): self.code_text.append(data)


def _nb_title(nb): return build.title_summary(nb)[0]

def _shown_code_cells(nb):
    "Code cells the page should show: not `#| hide`, and with code besides directives or with outputs"
    n = 0
    for c in nb.cells:
        if c.cell_type != 'code': continue
        dirs,code = build.split_directives(c.source)
        if 'hide' not in dirs and (code.strip() or c.get('outputs')): n += 1
    return n

def _png_outputs(nb):
    return sum('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
               and 'hide' not in build.split_directives(c.source)[0] for o in c.get('outputs', []))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):   # a browser may drop a connection as it exits: not a page error
        if not isinstance(sys.exc_info()[1], ConnectionError): super().handle_error(request, client_address)


@pytest.fixture
def site(tmp_path):
    "Build the site, serve it on a free localhost port, and dump every page's DOM with headless Chromium"
    browser = build.find_browser()
    if browser is None: pytest.skip("no chromium binary (apt-get install chromium)")
    out = tmp_path/'site'
    r = subprocess.run([sys.executable, str(ROOT/'docs'/'build.py'), str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"docs/build.py failed:\n{r.stderr[-3000:]}"
    server = _Server(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tmp_path/'chromium-profile'
    doms = {}
    try:
        for nb in NBS:
            page = build.page_name(nb)
            r = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                                '--disable-background-networking', f'--user-data-dir={profile}', '--dump-dom', base + page],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and '<body' in r.stdout, f"chromium could not render {page}: {r.stderr[-2000:]}"
            doms[page] = Dom(r.stdout)
        yield base, doms
    finally:
        server.shutdown()
        server.server_close()


def check_index(site):
    base,doms = site
    index = doms['index.html']
    title = _nb_title(nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4))
    assert title and index.title.strip() == title and index.h1.strip() == title


def check_sidebar_lists_every_page(site):
    base,doms = site
    algos = [build.page_name(p) for p in NBS if re.match(r'1\d_', p.name)]
    assert algos, "no algorithm notebooks found"
    assert set(algos) <= set(doms['index.html'].nav_links)
    for page,dom in doms.items():
        assert set(dom.nav_links) >= {build.page_name(p) for p in NBS}, f"{page}: sidebar is missing pages"


def check_pages_render_cells_and_plots(site):
    base,doms = site
    for p in NBS:
        nb,dom = nbformat.read(p, as_version=4),doms[build.page_name(p)]
        assert dom.h1.strip() == (_nb_title(nb) or p.stem)
        assert dom.classes[('div', 'code')] == _shown_code_cells(nb) > 0, f"{p.name}: code cells shown"
        assert '#|' not in ''.join(dom.code_text), f"{p.name}: a directive is left in the code shown"
        pngs = [s for s in dom.imgs if s.startswith('data:image/png;base64,')]
        assert len(pngs) >= _png_outputs(nb), f"{p.name}: {_png_outputs(nb)} plots in the notebook, {len(pngs)} on the page"
        for s in pngs: assert base64.b64decode(s.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'


def _exported(nb):
    "`__all__` of the module a notebook exports to (read from the source, not imported), `[]` if it exports nothing"
    exp = next((d['default_exp'] for c in nb.cells if c.cell_type == 'code'
                for d in [build.split_directives(c.source)[0]] if 'default_exp' in d), None)
    if exp is None: return []
    mod = ast.parse((ROOT/'fastai_ssl'/f"{exp.replace('.', '/')}.py").read_text())
    return next(ast.literal_eval(n.value) for n in mod.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', None) == '__all__')

def check_api_blocks(site):
    "Every exported name has its block on the page of its notebook"
    base,doms = site
    for p in NBS:
        missing = {f"api-{n}" for n in _exported(nbformat.read(p, as_version=4))} - doms[build.page_name(p)].ids
        assert not missing, f"{p.name}: no API block for {sorted(missing)}"
    text = ''.join(doms['fixmatch.html'].text)
    assert 'FixMatch(u_dl, thresh:float | None=None' in text and 'mask:Policy | None=None' in text and 'confident' in text


def check_links_resolve_and_nothing_external(site):
    base,doms = site
    status = {}
    for page,dom in doms.items():
        for tag,ref in dom.refs:
            scheme = urllib.parse.urlsplit(ref).scheme
            if tag != 'a':   # stylesheets, images, scripts: embedded or on this site, never fetched from the network
                assert scheme in ('', 'data'), f"{page}: <{tag}> loads {ref[:80]} from the network"
            if scheme: continue
            url,frag = urllib.parse.urldefrag(urllib.parse.urljoin(base + page, ref))
            assert url.startswith(base), f"{page}: {ref} leaves the site"
            if url not in status:
                try: status[url] = urllib.request.urlopen(url, timeout=10).status
                except urllib.error.HTTPError as e: status[url] = e.code
            assert status[url] == 200, f"{page}: {ref} -> HTTP {status[url]}"
            target = url[len(base):] or 'index.html'
            if frag and target in doms: assert frag in doms[target].ids, f"{page}: {ref}: no #{frag} in {target}"
    assert len(status) >= len(doms)


def check_no_tracebacks(site):
    base,doms = site
    for page,dom in doms.items():
        text = ''.join(dom.text)
        assert 'Traceback (most recent call last)' not in text and not dom.classes[('pre', 'error')], f"{page} shows an error"


def test_docs_site(site):
    "One test, so that the site is built and rendered once, also when pytest-xdist spreads tests over workers"
    for check in (check_index, check_sidebar_lists_every_page, check_pages_render_cells_and_plots, check_api_blocks,
                  check_links_resolve_and_nothing_external, check_no_tracebacks):
        check(site)
