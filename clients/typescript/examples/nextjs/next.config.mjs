import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// mlops-chat-tracking is linked from ../.. (file:../..), so the package
// folder is the root that the bundler and the output tracing may read from.
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** @type {import('next').NextConfig} */
const nextConfig = {
  outputFileTracingRoot: packageRoot,
  webpack(config) {
    // The route imports "../../../lib/chat-model.js", the NodeNext spelling
    // that Node's test runner needs for the fixture; webpack maps it to the
    // .ts file. Turbopack has no such option in Next.js 16.4 (vercel/next.js
    // #82945), hence `next build --webpack`.
    config.resolve.extensionAlias = { ".js": [".ts", ".tsx", ".js"] };
    return config;
  },
};

export default nextConfig;
