"""The page `charrnn serve` answers at GET /: type a prompt, pick the model and the decoding
settings, and watch the text stream in from /v1/completions (server-sent events read with
fetch, so an API key can go in the Authorization header). Self-contained: nothing is fetched
but the server's own endpoints.
"""
from __future__ import annotations

from charrnn.htmlpage import page

CSS = """
form { display: grid; grid-template-columns: repeat(4, auto); gap: 6px 14px; align-items: center; max-width: 760px; }
textarea { grid-column: 1 / -1; width: 100%; min-height: 70px; font: 13px ui-monospace, monospace; }
input[type=number] { width: 90px; }
#out { min-height: 160px; white-space: pre-wrap; }
#out .prompt { color: #777; }
"""

BODY = """
<h1>charrnn serve</h1>
<p class="sub">Type a prompt and generate; the text streams in as the model writes it.</p>
<form id="f">
  <textarea id="prompt" placeholder="ROMEO:">ROMEO:</textarea>
  <label>model <select id="model"></select></label>
  <label>characters <input id="max_tokens" type="number" min="1" value="300"></label>
  <label>temperature <input id="temperature" type="number" min="0" step="0.05" value="0.8"></label>
  <label>top-p <input id="top_p" type="number" min="0.01" max="1" step="0.01" value="1"></label>
  <label>top-k <input id="top_k" type="number" min="0" value="0"></label>
  <label>seed <input id="seed" type="number" min="0" placeholder="random"></label>
  <label>session <input id="session" size="10" placeholder="none"></label>
  <label>API key <input id="key" type="password" size="10"></label>
  <button id="go" type="submit">Generate</button> <button id="halt" type="button" disabled>Stop</button>
  <span id="status" class="note"></span>
</form>
<pre id="out" class="sample"></pre>
"""

SCRIPT = """
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var ctrl = null;
  function headers() {
    var h = {'Content-Type': 'application/json'};
    if ($('key').value) h['Authorization'] = 'Bearer ' + $('key').value;
    return h;
  }
  function status(s) { $('status').textContent = s; document.documentElement.setAttribute('data-status', s); }
  function loadModels() {
    fetch('/v1/models', {headers: headers()}).then(function (r) { return r.json(); }).then(function (j) {
      if (!j.data) { status(j.error ? j.error.message : 'no models'); return; }
      $('model').innerHTML = '';
      j.data.forEach(function (m) {
        var o = document.createElement('option'); o.value = o.textContent = m.id; $('model').appendChild(o);
      });
      document.documentElement.setAttribute('data-models', j.data.length);
    });
  }
  function num(id) { var v = $(id).value; return v === '' ? null : Number(v); }
  $('key').addEventListener('change', loadModels);
  $('halt').addEventListener('click', function () { if (ctrl) ctrl.abort(); });
  $('f').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var body = {model: $('model').value, prompt: $('prompt').value, max_tokens: num('max_tokens'),
                temperature: num('temperature'), top_p: num('top_p'), top_k: num('top_k'), stream: true};
    if (num('seed') !== null) body.seed = num('seed');
    if ($('session').value) body.session = $('session').value;
    var out = $('out'), p = document.createElement('span');
    out.textContent = ''; p.className = 'prompt'; p.textContent = body.prompt; out.appendChild(p);
    var gen = document.createTextNode(''); out.appendChild(gen);
    ctrl = new AbortController(); $('go').disabled = true; $('halt').disabled = false; status('generating');
    var done = function (s) { $('go').disabled = false; $('halt').disabled = true; status(s); };
    fetch('/v1/completions', {method: 'POST', headers: headers(), body: JSON.stringify(body), signal: ctrl.signal})
      .then(function (r) {
        if (!r.ok) return r.json().then(function (j) { done('error: ' + j.error.message); });
        var reader = r.body.getReader(), dec = new TextDecoder(), buf = '';
        function pump() {
          return reader.read().then(function (x) {
            if (x.done) { done('done'); return; }
            buf += dec.decode(x.value, {stream: true});
            var cut;
            while ((cut = buf.indexOf('\\n\\n')) >= 0) {
              var line = buf.slice(0, cut); buf = buf.slice(cut + 2);
              if (line.indexOf('data: ') !== 0) continue;
              var data = line.slice(6);
              if (data === '[DONE]') continue;
              var c = JSON.parse(data).choices[0];
              gen.appendData(c.text);
              if (c.finish_reason) status('finished: ' + c.finish_reason);
            }
            return pump();
          });
        }
        return pump();
      }).catch(function (e) { done(e.name === 'AbortError' ? 'stopped' : 'error: ' + e); });
  });
  loadModels();
})();
"""

PAGE = page("charrnn serve", BODY, CSS, SCRIPT)
