// The app opens this page at once and replaces it with the node's chat page
// when the node is up; if the node cannot start, the app reloads it with
// ?error=… to say why.
const error = new URLSearchParams(location.search).get("error");
if (error) {
  document.getElementById("status").textContent = "rbee could not start its node:";
  const pre = document.getElementById("error");
  pre.textContent = error;
  pre.hidden = false;
}
