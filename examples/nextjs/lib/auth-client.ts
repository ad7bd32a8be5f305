"use client";
import { createAuthClient } from "better-auth/react";
import { jwtClient } from "better-auth/client/plugins";

// Same origin as the app: no baseURL needed.
export const authClient = createAuthClient({ plugins: [jwtClient()] });
