import { redirect } from "next/navigation";
import { currentUser } from "@/lib/auth";
import { SignInForm } from "@/components/sign-in-form";

export default async function SignInPage() {
  if (await currentUser()) redirect("/");
  return (
    <main className="narrow">
      <h1>Sign in</h1>
      <SignInForm />
    </main>
  );
}
