// picochat labeling page: fetch a prompt with K sampled answers, let a person rank them, submit.
// The token comes from the URL fragment (#token=...), which browsers never send to servers.
// All prompt and answer text is inserted with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, task: null };

function status(text) { $("label-status").textContent = text; }

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Label-Token": state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

function renderTask(task) {
  state.task = task;
  $("prompt").textContent = task.prompt;
  const K = task.completions.length;
  const items = task.completions.map((text, i) => {
    const li = document.createElement("li");
    li.className = "answer";
    const select = document.createElement("select");
    select.className = "rank";
    select.dataset.index = String(i);
    select.setAttribute("aria-label", "rank of answer " + (i + 1));
    const blank = document.createElement("option");
    blank.value = "";
    blank.textContent = "rank";
    select.append(blank);
    for (let r = 1; r <= K; r++) {
      const opt = document.createElement("option");
      opt.value = String(r);
      opt.textContent = String(r);
      select.append(opt);
    }
    const pre = document.createElement("pre");
    pre.className = "text";
    pre.textContent = text;
    li.append(select, pre);
    return li;
  });
  $("answers").replaceChildren(...items);
  $("all-bad").checked = false;
  $("task").hidden = false;
}

async function nextTask() {
  $("task").hidden = true;
  status("sampling answers…");
  try {
    renderTask(await api("/api/label/task"));
    status("");
  } catch (err) {
    status("error: " + err.message);
  }
}

async function submit() {
  const K = state.task.completions.length;
  const allBad = $("all-bad").checked;
  const ranks = [...document.querySelectorAll("select.rank")].map((s) => s.value ? Number(s.value) : (allBad ? K : 0));
  if (ranks.includes(0)) {
    status("give every answer a rank (or tick \"all answers are bad\")");
    return;
  }
  $("submit").disabled = true;
  try {
    const body = { task_id: state.task.task_id, ranks, all_bad: allBad, labeler: $("labeler").value.trim() };
    const res = await api("/api/label/submit", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("label-count").textContent = res.count + " labels";
    status("saved ranking #" + res.id);
    await nextTask();
  } catch (err) {
    status("error: " + err.message);
  } finally {
    $("submit").disabled = false;
  }
}

function start(token) {
  state.token = token;
  sessionStorage.setItem("picochat-label-token", token);
  $("token-form").hidden = true;
  api("/api/label/stats").then((s) => { $("label-count").textContent = s.count + " labels"; }).catch(() => {});
  nextTask();
}

$("submit").addEventListener("click", submit);
$("skip").addEventListener("click", nextTask);
$("labeler").value = localStorage.getItem("picochat-labeler") || "";
$("labeler").addEventListener("change", () => localStorage.setItem("picochat-labeler", $("labeler").value.trim()));
$("token-form").addEventListener("submit", (ev) => { ev.preventDefault(); start($("token").value.trim()); });

const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) history.replaceState(null, "", location.pathname);
const token = fromHash || sessionStorage.getItem("picochat-label-token");
if (token) start(token); else $("token-form").hidden = false;
