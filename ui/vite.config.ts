/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The bundle is served by `sepchat serve` (and later the Tauri window) under a CSP of `default-src 'self'`:
// no inline scripts or styles, so CSS must stay in files (Svelte's default) and nothing may load from elsewhere.
export default defineConfig({
  plugins: [svelte()],
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Inlined assets would be data: URLs, which the CSP's img-src/font-src ('self') refuses.
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.ts'],
  },
});
