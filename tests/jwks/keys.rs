//! Fixed test keys, generated once with openssl (`genpkey -algorithm ed25519`,
//! `genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`) and pasted here, so
//! the tests need no key generation at run time. Test-only: never use them.
#![allow(dead_code)]

/// Ed25519 key A: private (PKCS#8), public (SPKI), and the JWK `x`.
pub const ED_A_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIOKLXHiZmtHVOyEtzzuOiUXJtY3oipjPfl2XHdJxvzKc
-----END PRIVATE KEY-----
";
pub const ED_A_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEANJ4Kp5tr9HV5MfaiSVwbxhTuSPiOtA5QDUOOcwQimSY=
-----END PUBLIC KEY-----
";
pub const ED_A_X: &str = "NJ4Kp5tr9HV5MfaiSVwbxhTuSPiOtA5QDUOOcwQimSY";
pub const ED_A_RAW: [u8; 32] = [
    52, 158, 10, 167, 155, 107, 244, 117, 121, 49, 246, 162, 73, 92, 27, 198, 20, 238, 72, 248, 142, 180, 14, 80, 13,
    67, 142, 115, 4, 34, 153, 38,
];

/// Ed25519 key B: private (PKCS#8), public (SPKI), and the JWK `x`.
pub const ED_B_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIHxRKbMU0OlBXYX16NXDMyJe2lN/upunm6AmACQ+gH3
-----END PRIVATE KEY-----
";
pub const ED_B_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAwdQzSb1lAmI0du+u1azhG3tQfm8s3pvWuI3cuvE+BpY=
-----END PUBLIC KEY-----
";
pub const ED_B_X: &str = "wdQzSb1lAmI0du-u1azhG3tQfm8s3pvWuI3cuvE-BpY";
pub const ED_B_RAW: [u8; 32] = [
    193, 212, 51, 73, 189, 101, 2, 98, 52, 118, 239, 174, 213, 172, 225, 27, 123, 80, 126, 111, 44, 222, 155, 214, 184,
    141, 220, 186, 241, 62, 6, 150,
];

/// Ed25519 key C: private (PKCS#8), public (SPKI), and the JWK `x`.
pub const ED_C_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJIGY/EflC9LbWUV7QEXIMJDP23EdUV7rVT10i9mbZPc
-----END PRIVATE KEY-----
";
pub const ED_C_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAAIBmKSBcSC1pwn8cZvZq0ugLtlPjFt/DbMap+wyiBMA=
-----END PUBLIC KEY-----
";
pub const ED_C_X: &str = "AIBmKSBcSC1pwn8cZvZq0ugLtlPjFt_DbMap-wyiBMA";
pub const ED_C_RAW: [u8; 32] = [
    0, 128, 102, 41, 32, 92, 72, 45, 105, 194, 127, 28, 102, 246, 106, 210, 232, 11, 182, 83, 227, 22, 223, 195, 108,
    198, 169, 251, 12, 162, 4, 192,
];

/// RSA-2048 key: private (PKCS#8), public (SPKI), and the JWK `n` / `e`.
pub const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCtimRUzsP+ii4u
nyHgT1ypQEwEXMXw44TCj4ewymicNlcXr1EfsUE4JnhRGgSj+w3emGLfHTepi+Bp
SjLEhw5wNYf9+VNy/7H5k994XH4y/UQfXZwDk0dBF+UsovMFAfHMKieTRyW8h+PY
Qnlh68DI0PrgxlDYErWqhyym0ZwcFNADEvR1AR+1sDcvp3scrQrtk+1IIeHCeCtZ
GqXyha01GNAiF52gy3Ripd2fEagq4/8CXLFk+qneUxbiBD7givIqAt1R/8eA8slb
5NibgwgQd54r2N9gYsG0xWfKJ5v0EZwmpCyzax6SeRCoSE8d6WHVZRyHvmTMtLCE
0v4wLME/AgMBAAECggEAQ1J8uam8vvI8GDoDmlEvUTlwRAD5iQm6Zv/nU94x1uf9
wWJxximtc2r5If1F75dlOgVD1eovvcZVuILgTv1VzJH3v78JcINhN8D14GuBSaaW
1tQpwflQmx/59+b+/+JROzLfR3NCYHEXIr4m+KXMlBr+OFS26BvZ/d2SpOSL+xgz
z59lenwfcHbbVtK9vi16Q3hY10tGjeJpsUVjC+BdW/lXRAuzcOSVd1jhrmyDZBGk
62x5tBfse50EPnkElPQRjROCO9hThgN/CfEuUx8jatrsbQoAtAPEL5OP4NQ5wDo9
iQNRnAO4xRlxaWPD1boQqVo0XRiZlnfZrl8uMXYigQKBgQDj/Mpxos9VgWqDWq4V
nQ4rEJc0bNHdI8Izl19YAp9623+NCdoXnAbKbpIV4XNwbft0EpFeVkZyDbnEDcMA
/pgns3om9hGVPJriBdMxH9BrvAECBWCLCi3DxDZ5eVKPTYzPvY8A2iDjr+9Or+hk
PSVXvkVcPLXYmFspV2ghYLPDkwKBgQDC3QHk/0nbJ6R520bX4CwUsm2yGAI5iDn/
76gW01lLrkYZEmkbuM5ELKSGayYsnZpQpS/3DyvBCvw+vHBBIAyAqgma+jFidHGh
R7ppadcdwoQ7FVPxHUp/b8Fc89TxYOFL+ZZvCZGNcb2RnAIFCv9DP8ZcAroFXeao
JE5hjoCvJQKBgGtSve4eiWGkCYMKNfcAtwG4zqUkMOrcAXiN4pkoqvCH0ZSQNbV1
gpDa2jQorFIZxAxRDVOOY50fLvrGy6x1LSVLTM54ebB6FiMeQNvYMSH2H7dW1qq9
QOvuOwKWBTJmfEny3xW0mVT1pj6xekFts12JuVcBUU1D824TsnY78oO3AoGAcmq0
nxJq+lyXjdl8CmudVnXCRU0lmURs0eOVbfmhN/fXPwd5YgasTolr/WVS3+WWY33q
4QUuasYZgHjC7Op1jOLKiw4XCzlWMx3bzeOQpO+/FrYaOLw7LwKepgah5S0+fI7L
jt0ucr/zUFkrMmzXn1QGE6aiNV6Cff37a/rxgmUCgYEArzJTQQaiQKzl38imN8O9
KvKlj0MlHY/XxRxc16sKDb6wNjU8pk2Xw4d55lbXi2ierWFUABj3zIH0nzmlyHOA
zTlRwb2QYpYqbcJ14seRSeI3JzUtu3Hqp/zanxZuwWi3QfEJWkzVWSjAgxEMBUeJ
81coZKXginJyT0vRbuMp3sY=
-----END PRIVATE KEY-----
";
pub const RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArYpkVM7D/oouLp8h4E9c
qUBMBFzF8OOEwo+HsMponDZXF69RH7FBOCZ4URoEo/sN3phi3x03qYvgaUoyxIcO
cDWH/flTcv+x+ZPfeFx+Mv1EH12cA5NHQRflLKLzBQHxzConk0clvIfj2EJ5YevA
yND64MZQ2BK1qocsptGcHBTQAxL0dQEftbA3L6d7HK0K7ZPtSCHhwngrWRql8oWt
NRjQIhedoMt0YqXdnxGoKuP/AlyxZPqp3lMW4gQ+4IryKgLdUf/HgPLJW+TYm4MI
EHeeK9jfYGLBtMVnyieb9BGcJqQss2seknkQqEhPHelh1WUch75kzLSwhNL+MCzB
PwIDAQAB
-----END PUBLIC KEY-----
";
pub const RSA_N: &str = "rYpkVM7D_oouLp8h4E9cqUBMBFzF8OOEwo-HsMponDZXF69RH7FBOCZ4URoEo_sN3phi3x03qYvgaUoyxIcOcDWH_flTcv-x-ZPfeFx-Mv1EH12cA5NHQRflLKLzBQHxzConk0clvIfj2EJ5YevAyND64MZQ2BK1qocsptGcHBTQAxL0dQEftbA3L6d7HK0K7ZPtSCHhwngrWRql8oWtNRjQIhedoMt0YqXdnxGoKuP_AlyxZPqp3lMW4gQ-4IryKgLdUf_HgPLJW-TYm4MIEHeeK9jfYGLBtMVnyieb9BGcJqQss2seknkQqEhPHelh1WUch75kzLSwhNL-MCzBPw";
pub const RSA_E: &str = "AQAB";
