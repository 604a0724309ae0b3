// What Java's SunPKCS11 KeyGenerator does with the module (tests/module_conformance.rs).
// Usage: java JceKeyGen.java <SunPKCS11 config> <user PIN>
// Prints one line: "GENERATED token=<CKA_TOKEN> sensitive=<...>" or "REFUSED <exception>".
import java.security.KeyStore;
import java.security.Provider;
import java.security.Security;
import javax.crypto.KeyGenerator;
import javax.crypto.SecretKey;

public class JceKeyGen {
    public static void main(String[] args) throws Exception {
        Provider p = Security.getProvider("SunPKCS11").configure(args[0]);
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, args[1].toCharArray());
        KeyGenerator kg = KeyGenerator.getInstance("AES", p);
        kg.init(256);
        try {
            SecretKey k = kg.generateKey();
            // P11Key's toString names the token/session state and sensitivity.
            System.out.println("GENERATED " + k);
        } catch (Exception e) {
            Throwable root = e;
            while (root.getCause() != null) {
                root = root.getCause();
            }
            System.out.println("REFUSED " + root);
        }
    }
}
