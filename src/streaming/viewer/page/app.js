// butler logs web: the page. Plain script, no dependencies, everything from this server.
// Log content is only ever put in the page as text (textContent), never as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 20000;   // rows kept in the page; past this the oldest are dropped (reloadable)
const TRIM_TO = 15000;

const list = { streams: new Map(), selected: null, wanted: decodeHash() };
let view = null;

function decodeHash() {
  try { return location.hash.length > 1 ? decodeURIComponent(location.hash.slice(1)) : null; } catch { return null; }
}

function fmtBytes(n) {
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, u = -1;
  do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
  return v.toFixed(v < 10 ? 1 : 0) + ' ' + units[u];
}

function fmtTime(rfc3339) {
  const d = new Date(rfc3339);
  return isNaN(d) ? rfc3339 : d.toLocaleString();
}

function plural(n, one, many) { return n + ' ' + (n === 1 ? one : many); }

function setConn(text, ok) {
  const el = $('conn');
  el.textContent = text;
  el.classList.toggle('ok', ok);
  el.classList.toggle('muted', !ok);
}

// ---- the stream list ----

function connectList() {
  const es = new EventSource('api/streams/live');
  es.addEventListener('streams', (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.reset) list.streams.clear();
    $('project').textContent = 'project ' + msg.project;
    for (const s of msg.streams) list.streams.set(s.path, s);
    renderList();
    setConn(msg.error ? 'store error: ' + msg.error : 'live', !msg.error);
    if (view && list.streams.has(view.path)) view.setStream(list.streams.get(view.path));
    if (list.wanted && list.streams.has(list.wanted)) {
      const w = list.wanted;
      list.wanted = null;
      select(w);
    }
  });
  es.onopen = () => setConn('live', true);
  es.onerror = () => setConn('reconnecting…', false);
}

// Rebuilds the list in place: existing elements are kept (and only moved when the order
// changes), so a click in progress is never lost to a refresh.
const groupEls = new Map();   // prefix -> group element
const buttonEls = new Map();  // path -> {el, sig}

function renderList() {
  const q = $('stream-filter').value.trim().toLowerCase();
  const groups = new Map();
  for (const s of list.streams.values()) {
    if (q && !s.path.toLowerCase().includes(q)) continue;
    let g = groups.get(s.prefix);
    if (!g) { g = { prefix: s.prefix, newest: 0, streams: [] }; groups.set(s.prefix, g); }
    g.streams.push(s);
    g.newest = Math.max(g.newest, s.id);
  }
  const ordered = [...groups.values()].sort((a, b) => b.newest - a.newest);
  const box = $('streams');
  const wanted = ordered.map((g) => groupEl(g));
  for (const [prefix, el] of groupEls) {
    if (!groups.has(prefix)) { el.remove(); groupEls.delete(prefix); }
  }
  placeInOrder(box, wanted);
  for (const [path, b] of buttonEls) {
    if (!list.streams.has(path) || (q && !path.toLowerCase().includes(q))) { b.el.remove(); buttonEls.delete(path); }
  }
  $('streams-empty').hidden = list.streams.size > 0;
}

// Makes `parent`'s children exactly `els`, in order, moving only what is out of place.
function placeInOrder(parent, els) {
  els.forEach((el, k) => {
    if (parent.children[k] !== el) parent.insertBefore(el, parent.children[k] || null);
  });
  while (parent.children.length > els.length) parent.lastElementChild.remove();
}

function groupEl(g) {
  let box = groupEls.get(g.prefix);
  if (!box) {
    box = document.createElement('div');
    box.className = 'group';
    const head = document.createElement('div');
    head.className = 'group-head';
    head.textContent = g.prefix;
    head.title = g.prefix;
    const items = document.createElement('div');
    box.append(head, items);
    groupEls.set(g.prefix, box);
  }
  g.streams.sort((a, b) => b.id - a.id);
  placeInOrder(box.lastElementChild, g.streams.map(streamButton));
  return box;
}

function streamButton(s) {
  const sig = [s.entries, s.bytes, s.open].join();
  let known = buttonEls.get(s.path);
  if (known && known.sig === sig) return known.el;
  let b = known && known.el;
  if (!b) {
    b = document.createElement('button');
    b.type = 'button';
    b.className = 'stream';
    b.setAttribute('role', 'listitem');
    b.dataset.path = s.path;
    b.setAttribute('aria-selected', String(s.path === list.selected));
    b.addEventListener('click', () => select(s.path));
  }
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = s.name;
  const info = document.createElement('div');
  info.className = 'info';
  const state = document.createElement('span');
  state.className = s.open ? 'state-open' : 'state-closed';
  state.textContent = s.open ? '● open' : s.abandoned ? 'cut short' : 'closed';
  const kind = document.createElement('span');
  kind.textContent = s.type;
  const size = document.createElement('span');
  size.textContent = fmtBytes(s.bytes);
  const entries = document.createElement('span');
  entries.textContent = plural(s.entries, 'entry', 'entries');
  info.append(state, kind, size, entries);
  b.replaceChildren(name, info);
  buttonEls.set(s.path, { el: b, sig });
  return b;
}

function select(path) {
  if (view) view.close();
  list.selected = path;
  history.replaceState(null, '', '#' + encodeURIComponent(path));
  for (const b of document.querySelectorAll('.stream')) {
    b.setAttribute('aria-selected', String(b.dataset.path === path));
  }
  $('welcome').hidden = true;
  $('stream').hidden = false;
  view = new View(list.streams.get(path));
  view.start();
}

// ---- one stream ----

class View {
  constructor(stream) {
    this.path = stream.path;
    this.stream = stream;
    this.type = stream.type;
    this.rows = [];          // {el, text, i (entry index where the row starts), start (row begins its entry)}
    this.tailOpen = false;   // text: the last row is a line still being written
    this.first = null;       // entry index of the first row loaded
    this.next = 0;           // entry index to follow from
    this.ended = !stream.open;
    this.es = null;
    this.closed = false;
    this.filter = $('line-filter').value.trim().toLowerCase();
    $('rows').replaceChildren();
    $('stream-path').textContent = stream.path;
    $('earlier').hidden = true;
    $('jump').hidden = true;
    this.setStream(stream);
  }

  close() {
    this.closed = true;
    if (this.es) this.es.close();
  }

  setStream(s) {
    this.stream = s;
    const parts = [s.type, s.open && !this.ended ? 'open, following live'
      : s.abandoned ? 'cut short (its writer died before ending it)' : 'closed',
      plural(s.entries, 'entry', 'entries'), fmtBytes(s.bytes), s.contentType, 'started ' + fmtTime(s.timestamp)];
    $('stream-meta').textContent = parts.join(' · ');
  }

  async start() {
    const page = await this.fetchPage('');
    if (!page || this.closed) return;
    this.first = page.first;
    this.next = page.next;
    this.append(page.entries, true);
    this.setStream(page.stream);
    $('earlier').hidden = this.first === 0;
    this.scrollToEnd();
    if (!page.terminal && !page.abandoned) this.follow();
    else { this.ended = true; this.setStream(page.stream); }
  }

  async fetchPage(at) {
    const r = await fetch('api/entries?path=' + encodeURIComponent(this.path) + at);
    if (!r.ok) { this.note('Could not read the stream: ' + (await r.text())); return null; }
    return r.json();
  }

  follow() {
    const es = new EventSource('api/follow?path=' + encodeURIComponent(this.path) + '&from=' + this.next);
    this.es = es;
    es.addEventListener('entries', (ev) => {
      const page = JSON.parse(ev.data);
      this.next = page.next;
      this.append(page.entries, false);
      this.setStream(page.stream);
    });
    es.addEventListener('end', (ev) => {
      es.close();
      this.ended = true;
      this.setStream(JSON.parse(ev.data).stream);
    });
    es.addEventListener('gone', (ev) => {
      es.close();
      this.note('Stopped following: ' + JSON.parse(ev.data).message);
    });
  }

  async loadEarlier() {
    if (this.first === null || this.first === 0) return;
    const page = await this.fetchPage('&before=' + this.first);
    if (!page || this.closed) return;
    const box = $('lines');
    const before = box.scrollHeight - box.scrollTop;
    this.prepend(page.entries);
    this.first = page.first;
    $('earlier').hidden = this.first === 0;
    box.scrollTop = box.scrollHeight - before;
  }

  // Rows for `entries`, continuing a line left open when `open` is given.
  build(entries, open) {
    const rows = [];
    let tail = open;
    for (const e of entries) {
      if (this.type === 'text') {
        const parts = e.text.split('\n');
        parts.forEach((p, k) => {
          const last = k === parts.length - 1;
          if (last && p === '') return;
          const line = !last && p.endsWith('\r') ? p.slice(0, -1) : p;
          if (k === 0 && tail) {
            tail.text += line;
            tail.done = !last;
            tail.dirty = true;
          } else {
            const row = { text: line, n: e.seq + k, i: e.i, start: k === 0, done: !last };
            rows.push(row);
            if (k === 0 && !tail) row.start = true;
            tail = row;
          }
          if (!last) tail = null;
        });
        if (e.text.endsWith('\n')) tail = null;
      } else if (this.type === 'binary') {
        const hex = e.hex || '';
        for (let off = 0; off < hex.length; off += 32) {
          const chunk = hex.slice(off, off + 32);
          const bytes = chunk.match(/../g) || [];
          const ascii = bytes.map((h) => { const c = parseInt(h, 16); return c >= 32 && c < 127 ? String.fromCharCode(c) : '.'; }).join('');
          rows.push({ key: (e.seq + off / 2).toString(16).padStart(8, '0'), text: bytes.join(' ').padEnd(47) + '  ' + ascii, i: e.i, start: off === 0, done: true });
        }
        if (e.cut) rows.push({ key: '', text: '… ' + fmtBytes(e.size - hex.length / 2) + ' more in this entry (' + fmtBytes(e.size) + ')', i: e.i, start: false, done: true, note: true });
        if (!hex.length) rows.push({ key: (e.seq).toString(16).padStart(8, '0'), text: '(empty)', i: e.i, start: true, done: true });
      } else {
        let text = e.text !== undefined ? e.text : (e.hex.match(/../g) || []).join(' ') + (e.cut ? ' …' : '');
        let key = '#' + e.seq;
        if (e.partial) key += ' part ' + (e.partial[0] + 1) + (e.partial[2] ? ' (last)' : '');
        rows.push({ key, text: text + '   (' + fmtBytes(e.size) + ')', i: e.i, start: true, done: true });
      }
    }
    return { rows, tail };
  }

  rowEl(row) {
    const el = document.createElement('div');
    el.className = 'row' + (row.done ? '' : ' partial');
    const k = document.createElement('span');
    if (this.type === 'text') { k.className = 'n'; k.textContent = String(row.n + 1); }
    else { k.className = 'k'; k.textContent = row.key; }
    const t = document.createElement('span');
    t.className = 't';
    t.textContent = row.text;
    el.append(k, t);
    row.el = el;
    this.applyFilterTo(row);
    return el;
  }

  refresh(row) {
    row.el.lastChild.textContent = row.text;
    row.el.classList.toggle('partial', !row.done);
    row.dirty = false;
    this.applyFilterTo(row);
  }

  append(entries, initial) {
    if (!entries.length) return;
    const box = $('lines');
    const stick = initial || box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    const open = this.tailOpen ? this.rows[this.rows.length - 1] : null;
    const { rows, tail } = this.build(entries, open);
    if (open && open.dirty) this.refresh(open);
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.append(this.rowEl(r));
    $('rows').append(frag);
    this.rows.push(...rows);
    this.tailOpen = !!tail;
    this.trim();
    this.count();
    if (stick) this.scrollToEnd();
    else $('jump').hidden = false;
  }

  prepend(entries) {
    if (!entries.length) return;
    const { rows, tail } = this.build(entries, null);
    const head = this.rows[0];
    if (tail && head) {
      // The earlier page ends inside the line the first loaded row continues.
      rows.pop();
      head.text = tail.text + head.text;
      head.n = tail.n;
      head.i = tail.i;
      head.start = tail.start;
      this.refresh(head);
    }
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.append(this.rowEl(r));
    $('rows').prepend(frag);
    this.rows.unshift(...rows);
    this.count();
  }

  // Keeps the page bounded: drops the oldest rows at an entry boundary ("Load earlier" brings them back).
  trim() {
    if (this.rows.length <= MAX_ROWS) return;
    let k = this.rows.length - TRIM_TO;
    while (k < this.rows.length && !this.rows[k].start) k++;
    if (k >= this.rows.length - 1) return;
    for (const r of this.rows.slice(0, k)) r.el.remove();
    this.rows = this.rows.slice(k);
    this.first = this.rows[0].i;
    $('earlier').hidden = false;
  }

  applyFilterTo(row) {
    row.el.hidden = !!this.filter && !row.text.toLowerCase().includes(this.filter);
  }

  setFilter(q) {
    this.filter = q.trim().toLowerCase();
    for (const r of this.rows) this.applyFilterTo(r);
    this.count();
  }

  count() {
    const what = this.type === 'text' ? ['line', 'lines'] : this.type === 'binary' ? ['row', 'rows'] : ['datagram', 'datagrams'];
    const total = this.rows.filter((r) => !r.note).length;
    let text = plural(total, what[0], what[1]) + ' loaded';
    if (this.filter) text = this.rows.filter((r) => !r.note && !r.el.hidden).length + ' of ' + text + ' match';
    $('line-count').textContent = text;
  }

  note(text) {
    const el = document.createElement('div');
    el.className = 'note';
    el.textContent = text;
    $('rows').append(el);
  }

  scrollToEnd() {
    const box = $('lines');
    box.scrollTop = box.scrollHeight;
    $('jump').hidden = true;
  }
}

$('stream-filter').addEventListener('input', renderList);
$('line-filter').addEventListener('input', (e) => { if (view) view.setFilter(e.target.value); });
$('earlier').addEventListener('click', () => { if (view) view.loadEarlier(); });
$('jump').addEventListener('click', () => { if (view) view.scrollToEnd(); });
$('lines').addEventListener('scroll', () => {
  const box = $('lines');
  if (box.scrollTop + box.clientHeight >= box.scrollHeight - 8) $('jump').hidden = true;
});
connectList();
