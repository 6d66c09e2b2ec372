// Live captions: follow /simul/listen and show the rolling translation (captions.html).
// Plain script, no dependencies. Events: listen.started (then a replay of finished
// sentences), input_text.words, response.output_text.delta/.done, error, session.ended.
"use strict";

(function () {
  const params = new URLSearchParams(location.search || location.hash.slice(1));
  const session = params.get("session") || "";
  const token = params.get("token") || "";
  const maxRows = Math.max(1, parseInt(params.get("lines") || "3", 10) || 3);
  const root = document.documentElement; // options as classes here, so html and body follow
  const box = document.getElementById("captions");
  const status = document.getElementById("status");
  if (params.get("transparent") === "1") root.classList.add("transparent");
  if (params.get("source") === "1") root.classList.add("with-source");
  if (params.get("size")) root.style.setProperty("--size", params.get("size"));

  const sentences = new Map(); // index -> {source: [], text: "", done: bool}
  let ended = false;
  let delay = 1000; // reconnect back-off, ms

  function say(text, problem) {
    status.textContent = text;
    status.classList.toggle("problem", Boolean(problem));
  }

  function sentence(index) {
    if (!sentences.has(index)) sentences.set(index, { source: [], text: "", done: false });
    return sentences.get(index);
  }

  function render() {
    const order = [...sentences.keys()].sort((a, b) => a - b);
    for (const index of order.slice(0, Math.max(0, order.length - maxRows))) sentences.delete(index);
    box.replaceChildren();
    for (const index of order.slice(-maxRows)) {
      const s = sentences.get(index);
      const row = document.createElement("div");
      row.className = s.done ? "row" : "row live";
      row.dataset.sentence = String(index);
      const source = document.createElement("div");
      source.className = "source";
      source.textContent = s.source.join(" ");
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = s.text.trim();
      row.append(source, text);
      box.append(row);
    }
  }

  function handle(event) {
    switch (event.type) {
      case "listen.started":
        sentences.clear(); // the replay that follows rebuilds the view
        delay = 1000;
        say("live");
        break;
      case "input_text.words":
        sentence(event.sentence).source.push(...event.words);
        break;
      case "response.output_text.delta":
        sentence(event.sentence).text += event.delta;
        break;
      case "response.output_text.done": {
        const s = sentence(event.sentence);
        s.text = event.text;
        if (event.source) s.source = event.source.split(/\s+/).filter(Boolean);
        s.done = true;
        break;
      }
      case "session.ended":
        ended = true;
        say("the talk has ended");
        break;
      case "error":
        say(event.error.message, true);
        break;
      default:
        return; // other events change nothing on screen
    }
    render();
  }

  async function refused() {
    // A refused handshake looks like any dropped connection to a page: ask the
    // subtitles route (same token check) whether the token is the reason.
    try {
      const reply = await fetch(`subtitles/${encodeURIComponent(session)}.vtt?token=${encodeURIComponent(token)}`);
      if (reply.status === 401 || reply.status === 403) {
        say((await reply.json()).error.message, true);
        return true;
      }
    } catch (err) { /* the server is away: keep trying */ }
    return false;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const base = location.pathname.replace(/captions$/, "");
    const url = `${scheme}//${location.host}${base}listen?session=${encodeURIComponent(session)}&token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url);
    window.captionsSocket = ws; // for tests and the console: close() to try a reconnect
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (message) => handle(JSON.parse(message.data));
    ws.onclose = async () => {
      if (ended) return;
      if (!opened && await refused()) return;
      say(`reconnecting in ${Math.round(delay / 1000)} s`, true);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  if (!session || !token) {
    say("open this page with ?session=<id>&token=<listen token>", true);
  } else {
    connect();
  }
})();
