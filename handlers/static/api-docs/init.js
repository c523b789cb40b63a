// Renders /api/openapi.json with Swagger UI from the drf-spectacular-sidecar package (a file, not inline: CSP is 'self').
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
  });
});
