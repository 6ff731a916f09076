"""The web page served at ``/``: paste a key, upload a file, see the HTML report. Plain HTML and
a little JavaScript; no build step. The key stays in the browser (sessionStorage)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>melodyguard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
label{display:block;margin:.6em 0 .2em;font-weight:600} input[type=text],input[type=password]{width:32em;max-width:100%}
button{margin-top:1em;padding:.4em 1.2em;font-size:1em} #status{margin:1em 0;font-size:1.1em}
.verdict{padding:.1em .5em;border-radius:4px;color:#fff;font-weight:700}
.block{background:#c0392b}.review{background:#d68910}.clear{background:#1e8449}
iframe{width:100%;height:80vh;border:1px solid #ccc}
.error{color:#c0392b}
</style></head>
<body>
<h1>melodyguard</h1>
<p>Check a MIDI or audio file against the catalogue. Your API key stays in this browser tab.</p>
<form id="form">
  <label for="key">API key</label><input id="key" type="password" autocomplete="off" placeholder="mg_..." required>
  <label for="file">File</label><input id="file" type="file" accept=".mid,.midi,.wav,.flac,.mp3,.ogg" required>
  <label><input id="tracks" type="checkbox"> MIDI: check the melody track only (faster; by default every track is checked, since a tune may hide in an inner voice)</label>
  <br><button id="go" type="submit">Check</button>
</form>
<div id="status" role="status" aria-live="polite"></div>
<iframe id="report" title="report" sandbox="" hidden></iframe>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("mgkey") || "";
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  sessionStorage.setItem("mgkey", key);
  const f = $("file").files[0];
  if (!f) return;
  $("status").textContent = "Checking " + f.name + "…";
  $("report").hidden = true;
  const body = new FormData();
  body.append("file", f, f.name);
  try {
    const r = await fetch("/v1/checks?format=html" + ($("tracks").checked ? "&tracks=melody" : ""), {method: "POST", headers: {"X-API-Key": key}, body});
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (e) {}
      $("status").innerHTML = "";
      const s = document.createElement("span"); s.className = "error";
      s.textContent = "Error " + r.status + ": " + (typeof detail === "string" ? detail : JSON.stringify(detail));
      $("status").appendChild(s);
      return;
    }
    const verdict = r.headers.get("X-Melodyguard-Verdict") || "?";
    $("status").innerHTML = "";
    const v = document.createElement("span"); v.className = "verdict " + verdict; v.id = "verdict";
    v.textContent = verdict.toUpperCase();
    $("status").append("Verdict: ", v);
    $("report").srcdoc = await r.text();
    $("report").hidden = false;
  } catch (e) {
    $("status").textContent = "Network error: " + e;
  }
});
</script>
</body></html>
"""
