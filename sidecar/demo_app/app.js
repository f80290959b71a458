// The demo's single-page app: a hash router (#/display/<module>) and a call to the backend,
// which answers with the identity headers it received. Text only, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);

function route() {
  const match = /^#\/display\/([A-Za-z0-9_-]{1,128})$/.exec(location.hash);
  if (match) {
    $("view-title").textContent = "Module " + match[1];
    $("view-body").textContent =
      "This is what the link opened: #/display/" + match[1] + ", kept through the sidecar's redirect.";
  } else {
    $("view-title").textContent = "Home";
    $("view-body").textContent = "No module in the address bar.";
  }
}

function row(name, value) {
  const tr = document.createElement("tr");
  for (const text of [name, value]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  return tr;
}

async function whoami() {
  let answer;
  try {
    const response = await fetch("/api/whoami", { headers: { Accept: "application/json" } });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.message || response.statusText);
  } catch (error) {
    $("status").textContent = "Not signed in: " + error.message;
    $("status").className = "error";
    return;
  }
  $("status").textContent = answer.user ? "Signed in." : "The backend received no identity.";
  $("who").hidden = !answer.user;
  $("user").textContent = answer.user || "";
  $("role").textContent = answer.role || "";
  $("tenant").textContent = answer.tenant || "—";
  $("logout").action = answer.logout_url;
  $("logout").hidden = !answer.user;
  const body = $("headers");
  body.replaceChildren(...Object.entries(answer.headers).map(([k, v]) => row(k, v)));
  $("cookies").textContent = answer.cookies.length ? answer.cookies.join(", ") : "none";
}

window.addEventListener("hashchange", route);
route();
whoami();
