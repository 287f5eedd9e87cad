// Starts Swagger UI on the page GET /docs serves. It runs from a file of its
// own, not an inline script, so that the page's Content-Security-Policy can
// allow scripts from the service and nothing else.
"use strict";

(function () {
  // The page is /docs and the document /openapi.yaml beside it: relative
  // URLs keep both working behind a proxy that adds a path prefix.
  var page = new URL(window.location.href);
  var spec = new URL("openapi.yaml", page);

  window.ui = SwaggerUIBundle({
    url: spec.href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // No badge from validator.swagger.io: the page talks to its own origin
    // only.
    validatorUrl: null,
    displayRequestDuration: true,
    // "Try it out" sends every request to the service that served this
    // page, whatever the document's servers say: the Content-Security-
    // Policy (connect-src 'self') would refuse any other origin anyway.
    requestInterceptor: function (req) {
      var url = new URL(req.url, page);
      if (url.origin !== page.origin) {
        url.protocol = page.protocol;
        url.host = page.host;
        req.url = url.href;
      }
      return req;
    },
  });
})();
