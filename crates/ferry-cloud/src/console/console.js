// Ferry console: the little the pages need beyond HTML. Everything works
// without it except the copy button, the agents tab refreshing itself and
// the install dialog starting its download by itself.
"use strict";
document.addEventListener("click", (ev) => {
  const copy = ev.target.closest("[data-copy]");
  if (copy) {
    const field = document.getElementById(copy.dataset.copy);
    field.select();
    const done = () => { copy.textContent = "Copied"; setTimeout(() => { copy.textContent = "Copy"; }, 2000); };
    if (navigator.clipboard) { navigator.clipboard.writeText(field.value).then(done, () => document.execCommand("copy") && done()); }
    else if (document.execCommand("copy")) { done(); }
  }
});
document.addEventListener("submit", (ev) => {
  const button = ev.submitter;
  if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) { ev.preventDefault(); }
});
// A section with data-refresh="N" reloads itself every N seconds (the
// Domain Agents tab), unless a dialog is open or a field has focus.
for (const section of document.querySelectorAll("[data-refresh]")) {
  const id = section.id;
  const every = Math.max(2, Number(section.dataset.refresh)) * 1000;
  setInterval(async () => {
    if (document.querySelector("dialog[open]") || document.activeElement?.matches("input, select, textarea")) return;
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (!r.ok) return;
    const next = new DOMParser().parseFromString(await r.text(), "text/html").getElementById(id);
    const current = document.getElementById(id);
    if (next && current) current.replaceWith(next);
  }, every);
}
// The install dialog starts the agent's download for this browser's
// platform as it opens (install guide step 4); its link is the fallback.
{
  const platform = /Windows/.test(navigator.userAgent) ? "windows" : "linux";
  const auto = document.querySelector(`dialog[open] a[data-autodownload=${platform}]`)
    || document.querySelector("dialog[open] a[data-autodownload]");
  if (auto) auto.click();
}
