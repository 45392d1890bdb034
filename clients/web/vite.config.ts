// The playground builds to dist/ with relative asset paths, so the same files work behind Envoy,
// from a static file server, or opened from any path prefix.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", sourcemap: true },
});
