import { defineConfig } from "vite";

// `npm run dev` serves the UI with hot reload and sends API calls to a
// node on the default port; `npm run build` writes dist/, which the node
// embeds and serves at /.
export default defineConfig({
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  server: {
    proxy: { "/v1": "http://127.0.0.1:7833", "/api": "http://127.0.0.1:7833" },
  },
});
