// MathJax configuration of the feedback pages (a file, not an inline script: the pages'
// Content-Security-Policy runs only scripts from their own folder). Only the notebook's
// markdown (class lg-math) is typeset; outputs and code are left alone.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true
  },
  svg: { fontCache: "global" },
  options: {
    enableMenu: false,
    ignoreHtmlClass: "lg-no-math",
    processHtmlClass: "lg-math"
  }
};
