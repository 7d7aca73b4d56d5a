/* flashsale live dashboard: one EventSource per page, DOM nodes built once and reused. */
'use strict';
(() => {
  const CHANNELS = ['all', 'live_room', 'community_group', 'mini_program', 'share_link', 'other'];
  const STAGES = ['viewers', 'clickers', 'carters', 'orderers', 'payers'];
  const SPARK_WINDOW_MS = 5 * 60 * 1000;
  const MAX_ALERTS = 20;
  const MAX_LEADERS = 10;
  const MAX_TOASTS = 4;
  const TOAST_MS = 6000;
  const MAX_ROOMS = 50;
  const NATIVE_RETRIES = 3;
  const MAX_BACKOFF_MS = 15000;
  const PHASE_LABELS = {
    upcoming: 'UPCOMING', live: 'LIVE', sold_out: 'SOLD OUT', back_in_stock: 'BACK IN STOCK', closed: 'CLOSED',
  };
  const GROUPS = ['now', 'upcoming', 'earlier'];
  const JUST_SOLD_OUT_MS = 10 * 60 * 1000;
  const REJECT_LABELS = {
    sold_out: 'sold out', limit_exceeded: 'over limit', sale_not_active: 'not active',
    duplicate: 'duplicate', invalid: 'invalid',
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    board: $('board'), empty: $('empty'), emptyTitle: $('empty-title'), emptyText: $('empty-text'),
    emptyRooms: $('empty-rooms'), picker: $('room-picker'), conn: $('conn'), connText: $('conn-text'),
    age: $('age'), asof: $('asof'), banner: $('banner'), title: $('room-title'),
    viewers: $('viewers'), peak: $('viewers-peak'), likes: $('likes'), comments: $('comments'),
    shares: $('shares'), orders: $('orders'), carts: $('carts'), gmv: $('gmv'), gmvPer: $('gmv-per-1000'),
    sales: $('sales'), saleCount: $('sale-count'), noSales: $('no-sales'), tpl: $('sale-template'),
    earlier: $('earlier'), earlierSales: $('earlier-sales'), earlierCount: $('earlier-count'),
    funnel: $('funnel'), overall: $('funnel-overall'), fOrders: $('funnel-orders'), aov: $('funnel-aov'),
    channels: $('channels'), leaders: $('leaders'), noLeaders: $('no-leaders'), alerts: $('alerts'),
    noAlerts: $('no-alerts'), toasts: $('toasts'),
  };
  const sparks = {
    viewers: [$('spark-viewers'), $('spark-viewers-area')],
    likes_per_s: [$('spark-likes'), $('spark-likes-area')],
    orders_per_s: [$('spark-orders'), $('spark-orders-area')],
  };

  const params = new URLSearchParams(location.search);
  // The link's token (?t=) opens one room or every room; it goes to the stream as ?t= (EventSource
  // sets no headers) and to the API as a bearer header. The room comes from /rooms/<id> or ?room=.
  const token = params.get('t') || '';
  const pathRoom = location.pathname.startsWith('/rooms/') ? decodeURIComponent(location.pathname.slice(7)) : '';
  const roomUrl = (id) => `/rooms/${encodeURIComponent(id)}?t=${encodeURIComponent(token)}`;
  const state = {
    room: pathRoom || params.get('room') || null, refused: false,
    channel: CHANNELS.includes(params.get('channel')) ? params.get('channel') : 'all',
    es: null, attempt: 0, errorsInRow: 0, retryTimer: 0, roomsTimer: 0,
    lastMsgAt: 0, intervalMs: 1000, currency: 'CNY',
    serverMs: 0, recvAt: 0, asOf: null,
    first: true, seenSpikes: new Set(), cards: new Map(), saleOrder: '',
    gmvShown: 0, gmvTarget: 0, gmvAnim: 0, roomsKey: null, emptyRoomsKey: null,
    stageRows: [], leaderRows: [], alertRows: [],
  };

  // ---- formatting -------------------------------------------------------------------------
  const nf = new Intl.NumberFormat(undefined);
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const pct = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 });
  let moneyFmt = null;
  let moneyCur = '';
  let moneyScale = 100;
  /** Minor units as money, always to the cent: every amount on the page reads the same way. */
  function money(minor) {
    if (minor == null) return '—';
    if (moneyCur !== state.currency) {
      moneyCur = state.currency;
      try {
        moneyFmt = new Intl.NumberFormat(undefined, { style: 'currency', currency: moneyCur });
        moneyScale = 10 ** moneyFmt.resolvedOptions().maximumFractionDigits;
      } catch (_) {
        moneyFmt = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
        moneyScale = 100;
      }
    }
    return moneyFmt.format(minor / moneyScale);
  }
  const clock = (ms) => new Date(ms).toLocaleTimeString(undefined, { hour12: false });
  function duration(ms) {
    const s = Math.max(0, ms) / 1000;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} m`;
  }
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

  /** Write a number: raw value in data-value (tests read it), formatted text; touch the DOM only on change. */
  function put(node, value, text) {
    const raw = value == null ? '' : String(value);
    if (node.dataset.value !== raw) node.dataset.value = raw;
    const shown = text !== undefined ? text : (value == null ? '—' : nf.format(value));
    if (node.textContent !== shown) node.textContent = shown;
  }
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
  function setAttr(node, name, value) { if (node.getAttribute(name) !== value) node.setAttribute(name, value); }
  function show(node, visible) { if (node.hidden === visible) node.hidden = !visible; }

  // ---- connection -------------------------------------------------------------------------
  function setConn(kind, text) {
    setAttr(el.conn, 'data-state', kind);
    setText(el.connText, text);
    const problem = kind === 'offline' || kind === 'reconnecting' || kind === 'degraded';
    show(el.banner, problem);
    if (problem) {
      setText(el.banner, kind === 'degraded' ? 'Live data source unavailable — showing the last numbers received.'
        : 'Connection lost — reconnecting automatically. Numbers below may be out of date.');
    }
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if (state.es) { state.es.close(); state.es = null; }
    if (!state.room || state.refused) return;
    const url = `/live/rooms/${encodeURIComponent(state.room)}?channel=${encodeURIComponent(state.channel)}`
      + `&t=${encodeURIComponent(token)}`;
    const es = new EventSource(url);
    state.es = es;
    state.lastMsgAt = Date.now();
    es.addEventListener('snapshot', onSnapshot);
    es.addEventListener('status', onStatus);
    es.onerror = () => {
      if (es !== state.es) return;
      state.errorsInRow += 1;
      // The browser retries by itself (every 2 s, the server's retry:); after a few failures or
      // a refused stream we take over with exponential backoff and jitter.
      if (es.readyState === EventSource.CLOSED || state.errorsInRow >= NATIVE_RETRIES) {
        scheduleReconnect();
        checkAccess();
      } else setConn('reconnecting', 'Reconnecting…');
    };
  }

  /** A refused stream may be an expired link: ask the API, and say so instead of retrying forever. */
  async function checkAccess() {
    let resp;
    try {
      resp = await fetch('/api/access', { headers: { Accept: 'application/json', Authorization: `Bearer ${token}` } });
    } catch (_) { return; }  // the server is down: keep reconnecting
    if (resp.status !== 401 && resp.status !== 403) return;
    let msg = 'This link does not open the dashboard.';
    try { msg = (await resp.json()).error || msg; } catch (_) { /* keep the default */ }
    refuse(msg);
  }

  function refuse(msg) {
    state.refused = true;
    clearTimeout(state.retryTimer);
    clearTimeout(state.roomsTimer);
    if (state.es) { state.es.close(); state.es = null; }
    showEmpty('This dashboard link does not work', `The server says: ${msg}. Ask the host for a new link.`, []);
    setConn('offline', 'Link expired');
  }

  function scheduleReconnect() {
    if (state.es) { state.es.close(); state.es = null; }
    if (state.refused) return;
    const base = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** state.attempt);
    const delay = Math.round(base * (0.7 + Math.random() * 0.6));
    state.attempt = Math.min(state.attempt + 1, 6);
    setConn('offline', `Offline · retry in ${Math.ceil(delay / 1000)} s`);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, delay);
  }

  function received() {
    state.lastMsgAt = Date.now();
    state.attempt = 0;
    state.errorsInRow = 0;
  }

  function onStatus(ev) {
    received();
    let p;
    try { p = JSON.parse(ev.data); } catch (_) { return; }
    if (p.error) setConn('degraded', 'Data delayed');
  }

  function onSnapshot(ev) {
    received();
    let p;
    try { p = JSON.parse(ev.data); } catch (_) { return; }
    if (p.room_id !== state.room) return;
    setConn('live', 'Live');
    state.intervalMs = p.interval_ms || 1000;
    state.currency = p.currency || state.currency;
    state.serverMs = p.server_ms;
    state.recvAt = Date.now();
    renderRooms(Array.isArray(p.rooms) ? p.rooms : []);
    const s = p.snapshot;
    if (!s) {
      state.asOf = null;
      showEmpty(`No live data for room ${state.room} yet`,
        'Waiting for its first events — this page updates by itself.', p.rooms || []);
      tickAge();
      return;
    }
    show(el.empty, false);
    show(el.board, true);
    state.asOf = num(s.as_of_ms);
    render(p, s);
    tickAge();
    state.first = false;
  }

  // ---- rendering --------------------------------------------------------------------------
  function render(p, s) {
    setText(el.title, `Room ${s.room_id}`);
    const t = `● ${s.room_id} · ${s.viewers_online ?? 0} watching · flashsale live`;
    if (document.title !== t) document.title = t;
    put(el.viewers, num(s.viewers_online));
    put(el.peak, num(s.viewers_peak));
    put(el.likes, num(s.likes_per_s), s.likes_per_s == null ? '—' : nf1.format(s.likes_per_s));
    put(el.comments, num(s.comments_per_s), s.comments_per_s == null ? '—' : nf1.format(s.comments_per_s));
    put(el.shares, num(s.shares));
    put(el.orders, num(s.orders_per_s), s.orders_per_s == null ? '—' : nf1.format(s.orders_per_s));
    put(el.carts, num(s.cart_adds_per_s), s.cart_adds_per_s == null ? '—' : nf1.format(s.cart_adds_per_s));
    put(el.gmvPer, num(s.gmv_per_1000_viewers), money(num(s.gmv_per_1000_viewers)));
    gmvTicker(num(s.gmv) ?? 0);
    const series = s.series || {};
    for (const name of Object.keys(sparks)) drawSpark(sparks[name], series[name], p.server_ms);
    renderSales(Array.isArray(s.sales) ? s.sales : [], p.server_ms);
    renderFunnel(p.funnel);
    renderLeaders(Array.isArray(s.leaderboard) ? s.leaderboard : []);
    renderAlerts(Array.isArray(s.spikes) ? s.spikes : []);
  }

  function gmvTicker(target) {
    el.gmv.dataset.value = String(target);
    if (target === state.gmvTarget && state.gmvShown === target) return;
    state.gmvTarget = target;
    cancelAnimationFrame(state.gmvAnim);
    const from = state.gmvShown;
    if (document.hidden || state.first || from === target) {
      state.gmvShown = target;
      setText(el.gmv, money(target));
      return;
    }
    const t0 = performance.now();
    const step = (now) => {
      const k = Math.min(1, (now - t0) / 700);
      state.gmvShown = k >= 1 ? target : Math.round(from + (target - from) * (1 - (1 - k) ** 3));
      setText(el.gmv, money(state.gmvShown));
      state.gmvAnim = k < 1 ? requestAnimationFrame(step) : 0;
    };
    state.gmvAnim = requestAnimationFrame(step);
  }

  function drawSpark([line, area], series, nowMs) {
    if (!Array.isArray(series) || series.length === 0) {
      setAttr(line, 'points', '');
      setAttr(area, 'd', '');
      return;
    }
    const t1 = Math.max(nowMs || 0, series[series.length - 1][0]);
    const t0 = t1 - SPARK_WINDOW_MS;
    let max = 0;
    for (const point of series) if (point[1] > max) max = point[1];
    max = max > 0 ? max * 1.15 : 1;
    let pts = '';
    let firstX = null;
    let lastX = 0;
    for (const [t, v] of series) {
      if (t < t0) continue;
      const x = ((t - t0) / SPARK_WINDOW_MS) * 300;
      const y = 58 - (Math.max(0, v) / max) * 52;
      if (firstX === null) firstX = x;
      lastX = x;
      pts += `${x.toFixed(1)},${y.toFixed(1)} `;
    }
    setAttr(line, 'points', pts);
    setAttr(area, 'd', firstX === null ? '' : `M${firstX.toFixed(1)},60 L${pts}L${lastX.toFixed(1)},60 Z`);
  }

  function saleCard(id) {
    let c = state.cards.get(id);
    if (c) return c;
    const node = el.tpl.content.firstElementChild.cloneNode(true);
    const k = (name) => {
      const n = node.querySelector(`[data-k="${name}"]`);
      n.dataset.testid = `sale-${id}-${name}`;
      return n;
    };
    node.dataset.testid = `sale-${id}-card`;
    c = {
      node, title: node.querySelector('.title'), sku: node.querySelector('.sku'), thumb: node.querySelector('.thumb'),
      badge: node.querySelector('.badge'), imageUrl: '',
      price: node.querySelector('.price'), segSold: node.querySelector('.seg-sold'),
      segReserved: node.querySelector('.seg-reserved'), segAvailable: node.querySelector('.seg-available'),
      available: k('available'), reserved: k('reserved'), sold: k('sold'), allotted: k('allotted'),
      sellThrough: k('sell-through'), attemptsPerS: k('attempts-per-s'), attempts: k('attempts'),
      accepted: k('accepted'), eta: k('eta'), rejects: k('rejects'),
    };
    c.badge.dataset.testid = `sale-${id}-status`;
    c.title.dataset.testid = `sale-${id}-title`;
    c.thumb.dataset.testid = `sale-${id}-image`;
    c.node.title = `sale ${id}`;  // the internal id stays reachable (hover), not in the host's face
    state.cards.set(id, c);
    return c;
  }

  /** The server's phase (consumers.readmodel.sale_phase); the same rule here for an older server. */
  function salePhase(s, nowMs) {
    if (PHASE_LABELS[s.phase]) return s.phase;
    if (s.status === 'closed' || (num(s.ends_at) && nowMs >= s.ends_at)) return 'closed';
    if (num(s.starts_at) && nowMs < s.starts_at) return 'upcoming';
    if ((num(s.available) ?? 1) <= 0 && (num(s.allotted) ?? 0) > 0) return 'sold_out';
    if (num(s.sold_out_at) && (num(s.available) ?? 0) > 0) return 'back_in_stock';
    return 'live';
  }

  function saleGroup(s, phase, nowMs) {
    if (GROUPS.includes(s.group)) return s.group;
    if (phase === 'live' || phase === 'back_in_stock') return 'now';
    if (phase === 'sold_out') return nowMs - (num(s.sold_out_at) ?? nowMs) <= JUST_SOLD_OUT_MS ? 'now' : 'earlier';
    return phase === 'upcoming' ? 'upcoming' : 'earlier';
  }

  function renderSales(sales, nowMs) {
    const placed = { now: [], upcoming: [], earlier: [] };
    for (const s of sales) {
      if (!s || typeof s.sale_id !== 'string') continue;
      const phase = salePhase(s, nowMs);
      placed[saleGroup(s, phase, nowMs)].push(s.sale_id);
      updateCard(saleCard(s.sale_id), s, phase, nowMs);
    }
    // Pinned and upcoming sales in the main grid, the rest collapsed; each in the server's order.
    const main = [...placed.now, ...placed.upcoming];
    const keep = new Set([...main, ...placed.earlier]);
    for (const [id, c] of state.cards) {
      if (!keep.has(id)) { c.node.remove(); state.cards.delete(id); }
    }
    const order = `${main.join('\u0000')}\u0001${placed.earlier.join('\u0000')}`;
    if (order !== state.saleOrder) {  // (re)insert only when the order changed
      state.saleOrder = order;
      for (const id of main) el.sales.appendChild(state.cards.get(id).node);
      for (const id of placed.earlier) el.earlierSales.appendChild(state.cards.get(id).node);
    }
    setText(el.saleCount, placed.now.length ? `${placed.now.length} now` : '');
    setText(el.earlierCount, String(placed.earlier.length));
    show(el.earlier, placed.earlier.length > 0);
    show(el.noSales, keep.size === 0);
  }

  /** A product image only from https: or this origin (the contract allows nothing else). */
  function safeImage(url) {
    return typeof url === 'string' && (/^https:\/\/[^\s"'<>\\]+$/.test(url) || /^\/[^/\s"'<>\\][^\s"'<>\\]*$/.test(url))
      ? url : '';
  }

  function updateCard(c, s, phase, nowMs) {
    const status = phase;
    setAttr(c.node, 'data-status', status);
    setAttr(c.badge, 'data-status', status);
    c.badge.dataset.value = status;
    setText(c.badge, PHASE_LABELS[phase]);
    const title = typeof s.title === 'string' && s.title ? s.title : '';
    setText(c.title, title || s.sku || s.sale_id);
    setText(c.sku, title ? `SKU ${s.sku || ''}` : '');
    const image = safeImage(s.image_url);
    if (image !== c.imageUrl) {
      c.imageUrl = image;
      if (image) c.thumb.src = image; else c.thumb.removeAttribute('src');
      show(c.thumb, Boolean(image));
    }
    setText(c.price, s.price == null ? '' : `${money(s.price)} each`);
    const allotted = num(s.allotted) ?? 0;
    const available = num(s.available) ?? 0;
    const reserved = num(s.reserved) ?? 0;
    const sold = num(s.sold) ?? 0;
    const total = Math.max(allotted, available + reserved + sold, 1);
    c.segSold.style.width = `${(100 * sold / total).toFixed(2)}%`;
    c.segReserved.style.width = `${(100 * reserved / total).toFixed(2)}%`;
    c.segAvailable.style.width = `${(100 * available / total).toFixed(2)}%`;
    put(c.available, num(s.available));
    put(c.reserved, num(s.reserved));
    put(c.sold, num(s.sold));
    put(c.allotted, num(s.allotted));
    const st = num(s.sell_through);
    put(c.sellThrough, st, st == null ? '—' : pct.format(st));
    const rates = s.attempts_per_s || {};
    const rate = num(rates['10s']) ?? num(rates['1s']);
    put(c.attemptsPerS, rate, rate == null ? '—' : nf1.format(rate));
    put(c.attempts, num(s.attempts));
    put(c.accepted, num(s.accepted));
    const soldOutAt = num(s.sold_out_at);
    const projected = num(s.projected_sell_out_at);
    const startsAt = num(s.starts_at);
    if (phase === 'upcoming' && startsAt) {
      c.eta.dataset.kind = 'countdown';
      put(c.eta, startsAt, `Starts in ${duration(startsAt - nowMs)} · at ${clock(startsAt)}`);
    } else if (phase === 'back_in_stock') {
      c.eta.dataset.kind = 'restocked';
      put(c.eta, soldOutAt, `Back in stock · sold out at ${clock(soldOutAt)}, ${nf.format(available)} available again`);
    } else if (phase === 'live' && projected) {
      c.eta.dataset.kind = 'projected';
      put(c.eta, projected, `Projected sell-out ${clock(projected)} (in ~${duration(projected - nowMs)})`);
    } else if (soldOutAt) {
      const took = num(s.seconds_to_sell_out);
      c.eta.dataset.kind = 'soldout';
      put(c.eta, soldOutAt, `Sold out at ${clock(soldOutAt)}${took != null ? ` · in ${duration(took * 1000)}` : ''}`);
    } else {
      c.eta.dataset.kind = '';
      const closedAt = num(s.closed_at);
      put(c.eta, null, phase === 'live' ? 'Waiting for demand'
        : phase === 'closed' && closedAt ? `Closed at ${clock(closedAt)}` : '');
    }
    const rej = s.rejected || {};
    const parts = [];
    for (const key of Object.keys(REJECT_LABELS)) {
      if (num(rej[key])) parts.push(`${nf.format(rej[key])} ${REJECT_LABELS[key]}`);
    }
    setText(c.rejects, parts.length ? `Rejected: ${parts.join(' · ')}` : '');
  }

  function renderFunnel(f) {
    if (state.stageRows.length === 0) {
      for (const stage of STAGES) {
        const row = document.createElement('div');
        row.className = 'stage';
        const label = document.createElement('span');
        label.className = 'label';
        label.textContent = stage;
        const track = document.createElement('div');
        track.className = 'track';
        const fill = document.createElement('div');
        fill.className = 'fill';
        const users = document.createElement('span');
        users.className = 'users';
        users.dataset.testid = `funnel-${stage}-users`;
        track.append(fill, users);
        const rate = document.createElement('span');
        rate.className = 'rate';
        rate.dataset.testid = `funnel-${stage}-rate`;
        row.append(label, track, rate);
        el.funnel.appendChild(row);
        state.stageRows.push({ stage, fill, users, rate });
      }
    }
    const byStage = new Map();
    for (const st of (f && Array.isArray(f.stages) ? f.stages : [])) byStage.set(st.stage, st);
    const top = num((byStage.get('viewers') || {}).users) || 0;
    for (const row of state.stageRows) {
      const st = byStage.get(row.stage) || {};
      const users = num(st.users);
      put(row.users, users);
      row.fill.style.width = `${top > 0 && users ? Math.min(100, Math.max(1.5, (100 * users) / top)).toFixed(2) : 0}%`;
      const r = num(st.rate_from_prev);
      put(row.rate, r, row.stage === 'viewers' ? '' : stageRate(r));
    }
    const overall = f ? num(f.overall_rate) : null;
    put(el.overall, overall, stageRate(overall));
    put(el.fOrders, f ? num(f.orders) : null);
    put(el.aov, f ? num(f.aov) : null, f && f.aov != null ? money(f.aov) : '—');
  }

  /** A step rate: — when the stage before was empty (null), a multiple above 100 % (stages count
   *  their own users: more clickers than viewers in a channel is real, not a bug). */
  function stageRate(r) {
    if (r == null) return '—';
    return r > 1 ? `${nf1.format(r)}×` : pct.format(r);
  }

  function renderLeaders(rows) {
    const n = Math.min(rows.length, MAX_LEADERS);
    while (state.leaderRows.length < n) {
      const i = state.leaderRows.length;
      const tr = document.createElement('tr');
      const cells = ['rank', 'referrer', 'orders', 'gmv', 'commission'].map((name) => {
        const td = document.createElement('td');
        if (name !== 'rank' && name !== 'referrer') td.className = 'num';
        if (name !== 'rank') td.dataset.testid = `leader-${i}-${name}`;
        tr.appendChild(td);
        return td;
      });
      cells[0].textContent = String(i + 1);
      el.leaders.appendChild(tr);
      state.leaderRows.push({ tr, cells });
    }
    state.leaderRows.forEach((row, i) => {
      show(row.tr, i < n);
      if (i >= n) return;
      const r = rows[i];
      put(row.cells[1], r.referrer_id, String(r.referrer_id));
      put(row.cells[2], num(r.orders));
      put(row.cells[3], num(r.gmv), money(num(r.gmv)));
      put(row.cells[4], num(r.commission ?? 0), money(num(r.commission ?? 0)));
    });
    show(el.noLeaders, n === 0);
  }

  const spikeKey = (s) => `${s.ts}|${s.scope}|${s.subject_id}|${s.metric}`;
  /** [what, rates, measured ratio]: the product's name, and rate over baseline as measured (not
   *  the configured threshold factor); "new" when there was no baseline yet. */
  function spikeText(s) {
    const rate = num(s.rate) ?? 0;
    const baseline = num(s.baseline) ?? 0;
    const ratio = num(s.ratio) ?? (baseline > 0 ? rate / baseline : null);
    const metric = String(s.metric || '').replace(/_per_s$/, '/s').replace(/_/g, ' ');
    const product = s.title || s.sku || s.subject_id;
    const what = s.scope === 'sale' ? `${metric} for ${product}` : `room ${metric}`;
    return [what, `${nf1.format(rate)}/s vs ${nf1.format(baseline)}/s usual`,
      ratio == null ? 'new' : `×${nf1.format(ratio)}`];
  }

  function renderAlerts(spikes) {
    const sorted = spikes.filter((s) => s && num(s.ts) != null).sort((a, b) => b.ts - a.ts);
    const fresh = [];
    const keys = new Set();
    for (const s of sorted) {
      const key = spikeKey(s);
      keys.add(key);
      if (!state.first && !state.seenSpikes.has(key)) fresh.push(s);
    }
    state.seenSpikes = keys;  // bounded by what the server sends
    for (const s of fresh.slice(0, MAX_TOASTS).reverse()) toast(s);
    const n = Math.min(sorted.length, MAX_ALERTS);
    while (state.alertRows.length < n) {
      const li = document.createElement('li');
      li.dataset.testid = 'alert-item';
      const x = document.createElement('span');
      x.className = 'x';
      const text = document.createElement('span');
      const time = document.createElement('time');
      li.append(x, text, time);
      el.alerts.appendChild(li);
      state.alertRows.push({ li, x, text, time });
    }
    state.alertRows.forEach((row, i) => {
      show(row.li, i < n);
      if (i >= n) return;
      const [what, rates, ratio] = spikeText(sorted[i]);
      setText(row.x, ratio);
      setText(row.text, `${what} — ${rates}`);
      setText(row.time, clock(sorted[i].ts));
    });
    show(el.noAlerts, n === 0);
  }

  function toast(s) {
    while (el.toasts.childElementCount >= MAX_TOASTS) el.toasts.firstElementChild.remove();
    const [what, rates, ratio] = spikeText(s);
    const box = document.createElement('div');
    box.className = 'toast';
    box.dataset.testid = 'toast';
    const head = document.createElement('b');
    head.textContent = `Spike ${ratio}: `;  // the measured ratio
    box.append(head, document.createTextNode(`${what} — ${rates}`));
    el.toasts.appendChild(box);
    setTimeout(() => box.remove(), TOAST_MS);
  }

  // ---- rooms, empty state, freshness ------------------------------------------------------
  function renderRooms(rooms) {
    const ids = rooms.slice(0, MAX_ROOMS).map((r) => String(r.room_id));
    if (state.room && !ids.includes(state.room)) ids.unshift(state.room);
    const key = ids.join('\u0000');
    if (key === state.roomsKey) return;
    state.roomsKey = key;
    while (el.picker.options.length > ids.length) el.picker.remove(el.picker.options.length - 1);
    ids.forEach((id, i) => {
      const opt = el.picker.options[i] || el.picker.appendChild(document.createElement('option'));
      opt.value = id;
      opt.textContent = `Room ${id}`;
    });
    if (!ids.length) {
      el.picker.appendChild(document.createElement('option')).textContent = 'No live rooms';
    }
    if (state.room) el.picker.value = state.room;
  }

  function showEmpty(title, text, rooms) {
    show(el.board, false);
    show(el.empty, true);
    setText(el.emptyTitle, title);
    setText(el.emptyText, text);
    const others = rooms.slice(0, 12).map((r) => String(r.room_id)).filter((id) => id !== state.room);
    const key = others.join('\u0000');
    if (key === state.emptyRoomsKey) return;
    state.emptyRoomsKey = key;
    el.emptyRooms.replaceChildren(...others.map((id) => {
      const li = document.createElement('li');
      const a = document.createElement('a');
      a.href = roomUrl(id);
      a.textContent = `Room ${id}`;
      li.appendChild(a);
      return li;
    }));
  }

  function tickAge() {
    if (state.asOf == null || !state.recvAt) {
      el.age.dataset.value = '';
      el.age.dataset.level = '';
      setText(el.age, 'data age —');
      setText(el.asof, state.room ? 'no events yet' : '—');
      return;
    }
    const age = Math.max(0, state.serverMs - state.asOf + (Date.now() - state.recvAt));
    el.age.dataset.value = String(Math.round(age));
    el.age.dataset.level = age < 3000 ? 'ok' : age < 15000 ? 'warn' : 'stale';
    setText(el.age, `data age ${duration(age)}`);
    setText(el.asof, `newest event ${clock(state.asOf)} · updated ${clock(state.serverMs)}`);
  }

  // ---- navigation -------------------------------------------------------------------------
  function syncUrl() {
    const q = new URLSearchParams();
    if (token) q.set('t', token);
    if (state.channel !== 'all') q.set('channel', state.channel);
    const path = state.room ? `/rooms/${encodeURIComponent(state.room)}` : location.pathname;
    const url = `${path}${q.toString() ? `?${q}` : ''}`;
    if (url !== `${location.pathname}${location.search}`) history.replaceState(null, '', url);
  }

  function syncChannelButtons() {
    for (const b of el.channels.querySelectorAll('button')) {
      setAttr(b, 'aria-pressed', String(b.dataset.channel === state.channel));
    }
  }

  function switchRoom(room) {
    if (!room || room === state.room) return;
    state.room = room;
    state.first = true;
    state.seenSpikes = new Set();
    state.asOf = null;
    state.saleOrder = '';
    for (const c of state.cards.values()) c.node.remove();
    state.cards.clear();
    state.gmvShown = 0;
    state.gmvTarget = 0;
    setText(el.title, `Room ${room}`);
    syncUrl();
    connect();
  }

  async function pickFirstRoom() {
    clearTimeout(state.roomsTimer);
    if (state.room) return;
    try {
      const resp = await fetch('/api/rooms', { headers: { Accept: 'application/json', Authorization: `Bearer ${token}` } });
      if (resp.status === 401 || resp.status === 403) {
        let msg = 'This link does not open the room list';
        try { msg = (await resp.json()).error || msg; } catch (_) { /* keep the default */ }
        refuse(msg);
        return;
      }
      const body = resp.ok ? await resp.json() : [];
      const rooms = Array.isArray(body) ? body : (body && Array.isArray(body.rooms) ? body.rooms : []);
      renderRooms(rooms);
      if (rooms.length) { switchRoom(String(rooms[0].room_id)); return; }
      showEmpty('No live rooms yet', 'Start a live room or a simulated sale; it will appear here.', []);
      setConn('live', 'Waiting');
    } catch (_) {
      setConn('offline', 'Offline');
    }
    state.roomsTimer = setTimeout(pickFirstRoom, 5000);
  }

  el.picker.addEventListener('change', () => switchRoom(el.picker.value));
  el.channels.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-channel]');
    if (!b || b.dataset.channel === state.channel) return;
    state.channel = b.dataset.channel;
    syncChannelButtons();
    syncUrl();
    connect();
  });
  setInterval(() => {
    tickAge();
    // A stream that went silent (proxy, sleeping laptop) never errors: reconnect it ourselves.
    if (state.es && Date.now() - state.lastMsgAt > Math.max(5000, state.intervalMs * 5)) scheduleReconnect();
  }, 1000);

  syncChannelButtons();
  if (state.room) {
    setText(el.title, `Room ${state.room}`);
    connect();
  } else {
    pickFirstRoom();
  }
})();
