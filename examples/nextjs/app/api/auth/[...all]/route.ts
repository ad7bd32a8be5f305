// BetterAuth's endpoints, among them /api/auth/token (a JWT for taskcast)
// and /api/auth/jwks (the public keys taskcast checks it with).
import { toNextJsHandler } from "better-auth/next-js";
import { auth } from "@/lib/auth";

export const { GET, POST } = toNextJsHandler(auth);
